//! Customer emails about status changes: rendering them in the customer's language, and sending them
//! over SMTP with a clear retry-or-park decision.
//!
//! The email publisher consumes each [`StatusChange`](tracking_domain::StatusChange) from `order.status`,
//! asks the [`Renderer`] for its email (none for statuses customers are not told about), and hands it to
//! the [`Mailer`] with a Message-ID derived from the change id ([`Mailer::message_id`]), so the same change
//! always produces the same Message-ID.
//!
//! Layout:
//! - [`render`]: [`Renderer`], [`TemplateSettings`], [`RenderedEmail`]. The words live in
//!   `templates/<locale>.toml` (pt-BR, es, en: a subject and a body template per notified status, plus
//!   greeting, signature, footer, field labels, reason names and date formats); the shape lives in
//!   `templates/layout.txt` and `templates/layout.html`. All of them are minijinja templates, embedded in
//!   the binary and checked once by [`Renderer::new`], which renders every one with sample data. The HTML
//!   layout is auto-escaped: names, places and carrier texts are inserted as text, never as markup.
//! - [`mailer`]: [`Mailer`], [`MailerSettings`]. lettre speaks SMTP on connections the crate opens and keeps
//!   for reuse itself (`smtp`: with `TCP_NODELAY`, which lettre's own pool does not set; `starttls`: STARTTLS
//!   done before lettre reads a byte, so nothing sent in clear is read as an answer given over TLS; `stream`:
//!   the stream lettre reads; `connections`: idle ones kept, and a pause after refused credentials);
//!   [`SendError`] tells transient failures (4xx answers, connection, timeout, TLS, I/O, anything while a
//!   connection is opened: retry) from permanent ones (5xx answers to the email, an address SMTP cannot carry:
//!   park, with the server's answer in the message).
//!
//! - [`page`]: the customer's tracking page ([`Renderer::page`], [`OrderPage`]), served by `tracking-api` at
//!   `GET /t/{token}`: the same engine, catalogs (`[status_names]`, `[page]`) and time zone, template
//!   `templates/page.html` and style `templates/page.css`.
//! - [`env`]: the settings emails and the page share (`STORE_NAME`, carrier links, `CUSTOMER_TIME_ZONE`,
//!   `TRACKING_PAGE_URL`, `TRACKING_PAGE_SECRET`). With `TRACKING_PAGE_URL`, an email's main link is the order's
//!   tracking page; without it, the carrier's.
//!
//! - [`unsubscribe`] and [`unsubscribe_page`]: the `List-Unsubscribe` and `List-Unsubscribe-Post` headers of
//!   every email (RFC 2369, RFC 8058; `UNSUBSCRIBE_SECRET`, `UNSUBSCRIBE_MAILTO`), and the short pages of the
//!   link (`/u/{token}`, served by `tracking-api`).
//!
//! Times are shown in [`TemplateSettings::time_zone`], whatever offset the carrier reported them in.
//! The rendered emails are pinned by snapshot tests (`tests/snapshots/`, rewritten with
//! `UPDATE_SNAPSHOTS=1 cargo test -p tracking-email`).

mod catalog;
mod connections;
pub mod env;
pub mod mailer;
pub mod page;
pub mod render;
mod smtp;
mod starttls;
mod stream;
pub mod unsubscribe;
pub mod unsubscribe_page;

pub use mailer::{Mailer, MailerConfigError, MailerSettings, SendError};
pub use page::{ErrorPage, OrderPage, PAGE_CSS, PageEvent, PageShipment, first_name};
pub use render::{LateEmail, RenderError, RenderedEmail, Renderer, TemplateSettings};
pub use unsubscribe::{ListUnsubscribe, Mailto, list_unsubscribe};
pub use unsubscribe_page::{UnsubscribePage, unsubscribe_page};
