//! The email publisher: one email per notified status change, in the customer's language.
//!
//! Per change: statuses that do not notify (configurable, `EMAIL_STATUSES`), a parcel first seen already delivered
//! (unless `EMAIL_DELIVERED_WHEN_FIRST_SEEN`; [`tracking_domain::notify`]) and customers of a marketplace that
//! emails them itself (`email_customers = false` in `MARKETPLACES_FILE`) are acked without email. A recipient who
//! opted out of the store's emails through the unsubscribe link ([`crate::opt_out`]) is recorded in `deliveries`
//! as skipped (`skipped: unsubscribed`), never sent nor retried; so is an email to a customer whose personal data
//! was erased since the change was queued (`skipped: erased`, [`crate::trusted`]; docs/privacy.md). Every email carries the unsubscribe headers. Otherwise the change is
//! sent once through [`crate::deliver::once`] (`email`, change id) with a Message-ID derived from the change id: a
//! redelivered change finds it done and sends nothing. SMTP 4xx, refused connections, timeouts and everything that
//! fails while a connection is opened (TLS, refused credentials) are retried in process, then with backoff through
//! the delay queues; a 5xx answer to the email itself (e.g. 550 an unknown mailbox) parks the change in
//! `email.order-status.dead` with the server's answer. At most `SMTP_MAX_IN_FLIGHT` sends are in flight at once
//! ([`crate::bulkhead`]): an SMTP server that hangs holds that many of the consumer's slots, and the other changes
//! wait in the delay queues.
//!
//! The same queue carries the scheduler's late notices (`{"kind": "late_notice", "notice_id": ...}`, see
//! [`tracking_domain::late`]): each is sent once, as the "your parcel is late" email in the customer's language, from
//! the notice the scheduler recorded and the shipment's current order context; a shipment that is no longer late
//! when the notice is handled (delivered meanwhile, a later promise) gets no email.

use crate::boot::{self, Schema, Worker};
use crate::bulkhead::Bulkhead;
use crate::deliver::{self, Attempt, RetryPolicy, To};
use crate::far_ends::FarEnds;
use crate::opt_out::{self, Unsubscribe};
use crate::trusted::{self, Trusted};
use std::collections::HashSet;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;
use tracking_app::topology::EMAIL_QUEUE;
use tracking_domain::notify::{self, Notify};
use tracking_domain::{LateNotice, Status, StatusChange, StoreName};
use tracking_email::{
    LateEmail, ListUnsubscribe, Mailer, MailerConfigError, MailerSettings, RenderedEmail, Renderer,
    TemplateSettings,
};
use tracking_marketplaces::Marketplaces;
use tracking_runtime::amqp::{AmqpSettings, Handler, Incoming, Outcome};
use tracking_runtime::settings::{self, SettingsError};
use tracking_runtime::tls::{self, PemKind};

pub const DESTINATION: &str = "email";

/// The detail recorded in `deliveries` for an email not sent because its customer's data was erased.
pub const SKIPPED_ERASED: &str = "skipped: erased";

pub struct Settings {
    pub amqp: AmqpSettings,
    pub db: tracking_store::DbSettings,
    pub mailer: MailerSettings,
    pub templates: TemplateSettings,
    /// `EMAIL_STATUSES`: comma-separated statuses that email the customer (default: posted, out_for_delivery,
    /// delivery_failed, awaiting_pickup, delivered, returning, exception).
    pub statuses: HashSet<Status>,
    /// `EMAIL_DELIVERED_WHEN_FIRST_SEEN` (default false): whether a parcel whose first status change is to
    /// delivered (the customer has it in hand) still gets the "delivered" email.
    pub delivered_when_first_seen: bool,
    /// `UNSUBSCRIBE_SECRET`, `UNSUBSCRIBE_MAILTO` (and `TRACKING_PAGE_URL`): the unsubscribe headers and opt-outs.
    pub unsubscribe: Unsubscribe,
    /// `STORES_FILE`: each store's sender (`email_from`), name in the emails (`display_name`), tracking page
    /// (`tracking_page_url`) and notified statuses (`notify`); what a store leaves out is the global setting.
    pub stores: tracking_domain::Stores,
    pub marketplaces: Marketplaces,
    /// `EMAIL_RETRY_BASE_MS` (default 2000): first queue delay after a transient SMTP failure, doubling per
    /// attempt; and the in-process retry settings.
    pub retry: RetryPolicy,
    /// `SMTP_MAX_IN_FLIGHT` (default 16): sends in flight at once to the SMTP server, out of `PREFETCH`.
    pub max_in_flight: usize,
    /// `FAR_END_WAIT_MS` (default 1000): how long a change waits in process for a place while the far end answers.
    pub far_end_wait: std::time::Duration,
}

/// `FAR_END_WAIT_MS`, shared by both publishers.
pub fn far_end_wait_from_env() -> Result<std::time::Duration, SettingsError> {
    settings::millis("FAR_END_WAIT_MS", 1_000)
}

pub fn marketplaces_from_env() -> Result<Marketplaces, SettingsError> {
    match settings::var("MARKETPLACES_FILE") {
        Some(path) => Marketplaces::load(std::path::Path::new(&path))
            .map_err(|e| SettingsError::new("MARKETPLACES_FILE", e.to_string())),
        None => Ok(Marketplaces::default()),
    }
}

impl Settings {
    pub fn from_env() -> Result<Self, SettingsError> {
        let amqp = AmqpSettings::from_env()?;
        let retry = RetryPolicy::from_env(
            settings::millis("EMAIL_RETRY_BASE_MS", 2_000)?,
            &amqp.retry_delays,
        )?;
        let max_in_flight = settings::parse("SMTP_MAX_IN_FLIGHT", 16usize)?;
        if max_in_flight == 0 {
            return Err(SettingsError::new(
                "SMTP_MAX_IN_FLIGHT",
                "must be at least 1",
            ));
        }
        let smtp_url = settings::required("SMTP_URL")?;
        let from = settings::required("EMAIL_FROM")?;
        let statuses = match settings::var("EMAIL_STATUSES") {
            None => notify::default_statuses(),
            Some(list) => list
                .split(',')
                .map(|s| {
                    s.trim()
                        .parse::<Status>()
                        .map_err(|e| SettingsError::new("EMAIL_STATUSES", e))
                })
                .collect::<Result<_, _>>()?,
        };
        // STORE_NAME, the carriers' links, CUSTOMER_TIME_ZONE and TRACKING_PAGE_URL: shared with tracking-api's page.
        let templates = tracking_email::env::template_settings()?;
        Ok(Self {
            db: boot::db_settings(tracking_store::env::WORKER_POOL_SIZE)?,
            mailer: MailerSettings {
                smtp_url: smtp_url.into(),
                from,
                timeout: settings::millis("SMTP_TIMEOUT_MS", 15_000)?,
                pool_max_size: settings::parse("SMTP_POOL_SIZE", 8u32)?,
                ca: tls::pem_file("SMTP_CA_FILE", PemKind::Certificates)?,
                auth_retry: settings::secs("SMTP_AUTH_RETRY_SECS", 300)?,
            },
            amqp,
            templates,
            statuses,
            delivered_when_first_seen: settings::parse("EMAIL_DELIVERED_WHEN_FIRST_SEEN", false)?,
            unsubscribe: Unsubscribe::from_env()?,
            stores: tracking_marketplaces::stores_from_env()
                .map_err(|e| SettingsError::new(e.setting, e.message))?,
            marketplaces: marketplaces_from_env()?,
            retry,
            max_in_flight,
            far_end_wait: far_end_wait_from_env()?,
        })
    }
}

pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let mailer = Mailer::new(&settings.mailer).map_err(|e| match e {
        MailerConfigError::Ca(reason) => SettingsError::new("SMTP_CA_FILE", reason),
        e => SettingsError::new("SMTP_URL", e.to_string()),
    })?;
    let renderer = Renderer::new(settings.templates.clone())?;
    settings.unsubscribe.log_start();
    let Some(worker) = Worker::start(
        "email-publisher",
        "127.0.0.1:9104",
        &settings.amqp,
        &settings.db,
        Schema::Wait,
        &shutdown,
    )
    .await?
    else {
        return Ok(());
    };
    let brands = Brands::build(&settings, mailer, renderer)?;
    let handler = Arc::new(EmailPublisher {
        reads: trusted::Reads::start(&worker.pool),
        pool: worker.pool.clone(),
        ledger: deliver::Ledger::start(
            worker.pool.clone(),
            settings.retry.lease,
            FarEnds::new(worker.health.clone()),
        ),
        brands,
        bulkhead: Bulkhead::new(DESTINATION, settings.max_in_flight, settings.far_end_wait),
        delivered_when_first_seen: settings.delivered_when_first_seen,
        unsubscribe: settings.unsubscribe,
        marketplaces: settings.marketplaces,
        retry: settings.retry,
    });
    worker
        .consume(settings.amqp, EMAIL_QUEUE, handler, shutdown)
        .await;
    worker.close().await;
    Ok(())
}

pub struct EmailPublisher {
    pool: tracking_store::Db,
    reads: trusted::Reads,
    ledger: deliver::Ledger,
    brands: Brands,
    bulkhead: Arc<Bulkhead>,
    delivered_when_first_seen: bool,
    unsubscribe: Unsubscribe,
    marketplaces: Marketplaces,
    retry: RetryPolicy,
}

/// How one store's emails go out: its sender, its templates' settings (name, tracking page) and its statuses.
struct Branded {
    mailer: Mailer,
    renderer: Renderer,
    statuses: HashSet<Status>,
    /// Whether its customers get the "your parcel is late" email (`notify` naming `late`; default yes).
    late: bool,
}

/// Each store's [`Branded`]; a store of no stores file (the default one) gets the global settings.
struct Brands {
    global: Branded,
    stores: std::collections::HashMap<tracking_domain::StoreName, Branded>,
}

impl Brands {
    fn build(settings: &Settings, mailer: Mailer, renderer: Renderer) -> anyhow::Result<Self> {
        let mut stores = std::collections::HashMap::new();
        for store in settings.stores.iter() {
            let setting =
                |key: &str| format!("STORES_FILE: store {:?}, {key}", store.name.as_str());
            let mut templates = settings.templates.clone();
            if let Some(name) = &store.display_name {
                templates.store_name = name.clone();
            }
            if let Some(url) = &store.tracking_page_url {
                let Some(links) = &templates.tracking_page else {
                    return Err(SettingsError::new(
                        "TRACKING_PAGE_SECRET",
                        format!("is required by {}", setting("tracking_page_url")),
                    )
                    .into());
                };
                templates.tracking_page = Some(links.with_base(url).map_err(|e| {
                    SettingsError::new(
                        "STORES_FILE",
                        format!("{}: {e}", setting("tracking_page_url")),
                    )
                })?);
            }
            let store_mailer = match &store.email_from {
                Some(from) => Mailer::new(&MailerSettings {
                    from: from.clone(),
                    ..settings.mailer.clone()
                })
                .map_err(|e| {
                    SettingsError::new("STORES_FILE", format!("{}: {e}", setting("email_from")))
                })?,
                None => mailer.clone(),
            };
            stores.insert(
                store.name.clone(),
                Branded {
                    mailer: store_mailer,
                    renderer: Renderer::new(templates)?,
                    statuses: store.notify.as_ref().map_or_else(
                        || settings.statuses.clone(),
                        |n| n.iter().copied().collect(),
                    ),
                    late: store.notify_late.unwrap_or(true),
                },
            );
        }
        Ok(Self {
            global: Branded {
                mailer,
                renderer,
                statuses: settings.statuses.clone(),
                late: true,
            },
            stores,
        })
    }

    fn of(&self, store: &tracking_domain::StoreName) -> &Branded {
        self.stores.get(store).unwrap_or(&self.global)
    }
}

fn count(result: &'static str) {
    metrics::counter!("emails_total", "result" => result).increment(1);
}

impl Handler for EmailPublisher {
    async fn handle(&self, msg: Incoming) -> Outcome {
        if let Some(notice) = LateNotice::from_body(&msg.body) {
            return self.late(notice).await;
        }
        let Trusted {
            change,
            superseded_by,
            erased,
        } = match trusted::recorded(&self.reads, &msg.body).await {
            Ok(t) => t,
            Err(outcome) => return outcome,
        };
        let brand = self.brands.of(&change.store);
        match notify::decide(&change, &brand.statuses, self.delivered_when_first_seen) {
            Notify::Email => {}
            Notify::NotNotified => {
                count("not_notified");
                return Outcome::Ack;
            }
            Notify::DeliveredWhenFirstSeen => {
                count("delivered_when_first_seen");
                tracing::info!(change_id = %change.change_id, "No email: the parcel's first news is its delivery (EMAIL_DELIVERED_WHEN_FIRST_SEEN is off).");
                return Outcome::Ack;
            }
        }
        if let Some(mp) = change
            .marketplace
            .as_ref()
            .and_then(|m| self.marketplaces.get(&m.name))
            && !mp.email_customers
        {
            count("marketplace_emails");
            return Outcome::Ack;
        }
        if erased {
            let delivered = self.skip_erased(change.change_id).await;
            count(match delivered.result {
                "skipped" => "erased",
                other => other,
            });
            return delivered.outcome;
        }
        match self
            .skip_if_unsubscribed(&change.store, &change.customer.email, change.change_id)
            .await
        {
            Ok(Some(delivered)) => {
                count(match delivered.result {
                    "skipped" => "unsubscribed",
                    other => other,
                });
                return delivered.outcome;
            }
            Ok(None) => {}
            Err(outcome) => return outcome,
        }
        let unsubscribe = self
            .unsubscribe
            .headers(&change.store, &change.customer.email);
        let email = match brand.renderer.render(&change) {
            Ok(Some(e)) => e,
            Ok(None) => {
                count("no_template");
                return Outcome::Ack;
            }
            Err(e) => {
                return Outcome::Park {
                    reason: format!("cannot render the email: {e}"),
                };
            }
        };
        let message_id = brand.mailer.message_id(change.change_id);
        // An email that waited while its shipment moved on is not sent late.
        let skip_if_waited =
            superseded_by.map(|later| format!("skipped: superseded by {later} while it waited"));
        let delivered = deliver::once(
            &self.ledger,
            DESTINATION,
            change.change_id,
            &self.retry,
            To {
                what: "the SMTP server",
                bulkhead: Some(&self.bulkhead),
            },
            skip_if_waited,
            || {
                self.attempt(
                    &brand.mailer,
                    &change.customer,
                    &email,
                    &message_id,
                    unsubscribe.as_ref(),
                )
            },
        )
        .await;
        count(match delivered.result {
            "delivered" => "sent",
            other => other,
        });
        match delivered.result {
            "delivered" => {
                tracing::info!(change_id = %change.change_id, to = %change.customer.email.masked(), status = %change.status,
                locale = change.customer.locale.as_str(), tries = delivered.tries, "Email accepted by the SMTP server.")
            }
            "duplicate" => {
                tracing::info!(change_id = %change.change_id, "Email already sent for this change; nothing to do.")
            }
            "skipped" => {
                tracing::info!(change_id = %change.change_id, superseded_by = ?superseded_by, "Email not sent: a later change superseded it while it waited.")
            }
            _ => {}
        }
        delivered.outcome
    }
}

fn count_late(result: &'static str) {
    metrics::counter!("late_emails_total", "result" => result).increment(1);
}

impl EmailPublisher {
    /// One try at sending `email` to `customer`: done with its Message-ID, or the SMTP failure by kind.
    async fn attempt(
        &self,
        mailer: &Mailer,
        customer: &tracking_domain::Customer,
        email: &RenderedEmail,
        message_id: &str,
        unsubscribe: Option<&ListUnsubscribe>,
    ) -> Attempt {
        match mailer
            .send_with(
                &customer.email,
                customer.name.as_deref(),
                email,
                message_id,
                unsubscribe,
            )
            .await
        {
            Ok(()) => Attempt::Done(message_id.to_owned()),
            Err(e) if e.is_transient() => Attempt::Transient {
                reason: e.to_string(),
                after: None,
            },
            Err(e) => Attempt::Permanent(e.to_string()),
        }
    }

    /// An email to an erased customer: the delivery `id` recorded as skipped (`skipped: erased`: done, no send, no
    /// retry), once like any delivery.
    async fn skip_erased(&self, id: uuid::Uuid) -> deliver::Delivered {
        let delivered = deliver::once(
            &self.ledger,
            DESTINATION,
            id,
            &self.retry,
            To {
                what: "the SMTP server",
                bulkhead: None,
            },
            None,
            || async { Attempt::Skipped(SKIPPED_ERASED.to_owned()) },
        )
        .await;
        if delivered.result == "skipped" {
            metrics::counter!("emails_skipped_total", "reason" => "erased").increment(1);
            tracing::info!(%id, "Email not sent: its customer's personal data was erased.");
        }
        delivered
    }

    /// When `address` opted out of `store`'s emails: the delivery `id` recorded as skipped (`skipped:
    /// unsubscribed`: done, no send, no retry), once like any delivery. `Ok(None)` otherwise; `Err` with the
    /// outcome when the database does not answer.
    async fn skip_if_unsubscribed(
        &self,
        store: &StoreName,
        address: &tracking_domain::EmailAddress,
        id: uuid::Uuid,
    ) -> Result<Option<deliver::Delivered>, Outcome> {
        match self.unsubscribe.opted_out(&self.pool, store, address).await {
            Ok(false) => Ok(None),
            Ok(true) => {
                let delivered = deliver::once(
                    &self.ledger,
                    DESTINATION,
                    id,
                    &self.retry,
                    To {
                        what: "the SMTP server",
                        bulkhead: None,
                    },
                    None,
                    || async { Attempt::Skipped(opt_out::SKIPPED_UNSUBSCRIBED.to_owned()) },
                )
                .await;
                if delivered.result == "skipped" {
                    metrics::counter!("emails_skipped_total", "reason" => "unsubscribed")
                        .increment(1);
                    tracing::info!(%id, %store, "Email not sent: its recipient unsubscribed from this store's emails.");
                }
                Ok(Some(delivered))
            }
            Err(e) => Err(crate::db_outcome(&e)),
        }
    }

    /// A late notice: sent once (keyed by its notice id) when it was recorded and the shipment is still late.
    async fn late(&self, notice: Result<LateNotice, String>) -> Outcome {
        let notice = match notice {
            Ok(n) => n,
            Err(reason) => return Outcome::Park { reason },
        };
        let id = notice.notice_id;
        let recorded = match tracking_store::late::notice(&self.pool, id).await {
            Ok(Some(r)) => r,
            Ok(None) => {
                metrics::counter!("changes_refused_total", "reason" => "not_recorded").increment(1);
                tracing::warn!(notice_id = %id, "A late notice that was never recorded arrived; parking it.");
                return Outcome::Park {
                    reason: format!(
                        "late notice {id} is not recorded in late_notices: only notices the scheduler recorded are sent"
                    ),
                };
            }
            Err(e) => return crate::db_outcome(&e),
        };
        if !recorded.still_late() {
            count_late("not_late");
            tracing::info!(notice_id = %id, tracking_code = %recorded.shipment.tracking_code,
                "Late email not sent: the shipment is no longer late.");
            return Outcome::Ack;
        }
        let status = match recorded.shipment.status() {
            Ok(s) => s,
            Err(e) => {
                return Outcome::Park {
                    reason: format!("the late notice's shipment cannot be read: {e}"),
                };
            }
        };
        // Every order the parcel carries gets the notice, each under an id of its own (the first order's is the
        // notice's), so each is sent once whatever happens to the others.
        for (i, order) in recorded.orders.iter().enumerate() {
            let request = match recorded.shipment.request_for(order) {
                Ok(r) => r,
                Err(e) => {
                    return Outcome::Park {
                        reason: format!("the late notice's order cannot be read: {e}"),
                    };
                }
            };
            let order_notice =
                StatusChange::id_for_order(id, i == 0, &request.store, &request.order_id);
            if order.erased {
                let delivered = self.skip_erased(order_notice).await;
                count_late(match delivered.result {
                    "skipped" => "erased",
                    other => other,
                });
                if !matches!(delivered.outcome, Outcome::Ack) {
                    return delivered.outcome;
                }
                continue;
            }
            let outcome = self
                .late_for_order(order_notice, &request, status, &recorded)
                .await;
            if !matches!(outcome, Outcome::Ack) {
                return outcome;
            }
        }
        Outcome::Ack
    }

    /// The late email of one order of the notice's parcel, sent once under `id`.
    async fn late_for_order(
        &self,
        id: uuid::Uuid,
        request: &tracking_domain::TrackingRequest,
        status: tracking_domain::Status,
        recorded: &tracking_store::late::RecordedNotice,
    ) -> Outcome {
        if let Some(mp) = request
            .marketplace
            .as_ref()
            .and_then(|m| self.marketplaces.get(&m.name))
            && !mp.email_customers
        {
            count_late("marketplace_emails");
            return Outcome::Ack;
        }
        let brand = self.brands.of(&request.store);
        if !brand.late {
            count_late("not_notified");
            return Outcome::Ack;
        }
        match self
            .skip_if_unsubscribed(&request.store, &request.customer.email, id)
            .await
        {
            Ok(Some(delivered)) => {
                count_late(match delivered.result {
                    "skipped" => "unsubscribed",
                    other => other,
                });
                return delivered.outcome;
            }
            Ok(None) => {}
            Err(outcome) => return outcome,
        }
        let unsubscribe = self
            .unsubscribe
            .headers(&request.store, &request.customer.email);
        let email: RenderedEmail = match brand.renderer.render_late(&LateEmail {
            store: &request.store,
            order_id: &request.order_id,
            tracking_code: &request.tracking_code,
            carrier: request.carrier,
            status,
            customer: &request.customer,
            promised: recorded.promised_at.fixed_offset(),
        }) {
            Ok(e) => e,
            Err(e) => {
                return Outcome::Park {
                    reason: format!("cannot render the late email: {e}"),
                };
            }
        };
        let message_id = brand.mailer.message_id(id);
        let delivered = deliver::once(
            &self.ledger,
            DESTINATION,
            id,
            &self.retry,
            To {
                what: "the SMTP server",
                bulkhead: Some(&self.bulkhead),
            },
            None,
            || {
                self.attempt(
                    &brand.mailer,
                    &request.customer,
                    &email,
                    &message_id,
                    unsubscribe.as_ref(),
                )
            },
        )
        .await;
        count_late(match delivered.result {
            "delivered" => "sent",
            other => other,
        });
        match delivered.result {
            "delivered" => {
                tracing::info!(notice_id = %id, to = %request.customer.email.masked(),
                locale = request.customer.locale.as_str(), tries = delivered.tries, "Late email accepted by the SMTP server.")
            }
            "duplicate" => {
                tracing::info!(notice_id = %id, "Late email already sent for this notice; nothing to do.")
            }
            _ => {}
        }
        delivered.outcome
    }
}
