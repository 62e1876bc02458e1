//! Carrier accounts: which account each store's calls are made with.
//!
//! A store of the stores file names its own Correios account (user, access code, postage card) and Jadlog token,
//! or leaves them out and uses the global ones (`CORREIOS_USER`, `JADLOG_TOKEN`). Stores naming the same account
//! (the same Correios user and card; the same Jadlog token) share it: one client (one token), one request budget
//! (`carrier_budget`, keyed by [`AccountId::key`]), one batcher and one health state. [`plan`] decides this without
//! any I/O; [`Accounts::build`] makes the clients.

use super::budget::SharedBudget;
use super::settings::CarrierSettings;
use secrecy::ExposeSecret;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use tracking_carriers::CarrierClient;
use tracking_carriers::correios::{CorreiosClient, CorreiosSettings};
use tracking_carriers::jadlog::{JadlogClient, JadlogSettings};
use tracking_domain::{Carrier, StoreName, Stores};
use tracking_store::Db;

/// One carrier account. `key` names it in the budget table, metrics labels, `/health` and logs: for Correios the
/// user and postage card (`correios:{user}:{card}`, as the budget was keyed before stores existed), for Jadlog
/// `jadlog` (the global token) or `jadlog:{first store naming the token}`; never a secret.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId {
    pub carrier: Carrier,
    pub key: String,
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key)
    }
}

/// An account's client settings.
#[derive(Debug, Clone)]
pub enum AccountSettings {
    Correios(CorreiosSettings),
    Jadlog(JadlogSettings),
}

/// What [`plan`] decided: each account with its settings and the stores using it, and each (store, carrier)'s
/// account.
#[derive(Debug)]
pub struct Plan {
    pub accounts: BTreeMap<AccountId, (AccountSettings, Vec<StoreName>)>,
    pub routes: HashMap<(StoreName, Carrier), AccountId>,
}

/// Which account each store uses for each carrier: its own when the stores file names one, else the global one
/// (when configured). A (store, carrier) without either has no route: its requests are held as an unconfigured
/// carrier's are.
pub fn plan(stores: &Stores, carriers: &CarrierSettings) -> Plan {
    let mut out = Plan {
        accounts: BTreeMap::new(),
        routes: HashMap::new(),
    };
    let mut jadlog_tokens: Vec<(String, AccountId)> = Vec::new();
    for store in stores.iter() {
        let correios = match &store.correios {
            Some(a) => Some(CorreiosSettings {
                user: a.user.clone(),
                access_code: a.access_code.clone(),
                postage_card: a.postage_card.clone(),
                ..carriers.correios_common.clone()
            }),
            None => carriers.correios.clone(),
        };
        if let Some(s) = correios {
            let id = AccountId {
                carrier: Carrier::Correios,
                key: s.account(),
            };
            add(&mut out, &store.name, id, AccountSettings::Correios(s));
        }
        let jadlog = match &store.jadlog {
            Some(j) => Some((
                JadlogSettings {
                    token: j.token.clone(),
                    ..carriers.jadlog_common.clone()
                },
                format!("jadlog:{}", store.name),
            )),
            None => carriers
                .jadlog
                .clone()
                .map(|s| (s, tracking_carriers::jadlog::ACCOUNT.to_owned())),
        };
        if let Some((s, key)) = jadlog {
            let token = s.token.expose_secret().to_owned();
            let id = match jadlog_tokens.iter().find(|(t, _)| *t == token) {
                Some((_, id)) => id.clone(),
                None => {
                    let id = AccountId {
                        carrier: Carrier::Jadlog,
                        key,
                    };
                    jadlog_tokens.push((token, id.clone()));
                    id
                }
            };
            add(&mut out, &store.name, id, AccountSettings::Jadlog(s));
        }
    }
    out
}

fn add(plan: &mut Plan, store: &StoreName, id: AccountId, settings: AccountSettings) {
    plan.routes.insert((store.clone(), id.carrier), id.clone());
    let entry = plan
        .accounts
        .entry(id)
        .or_insert_with(|| (settings, Vec::new()));
    if !entry.1.contains(store) {
        entry.1.push(store.clone());
    }
}

/// One account's client and the stores using it.
pub struct Account {
    pub client: Arc<dyn CarrierClient>,
    pub stores: Vec<StoreName>,
}

/// The clients of every account, and each (store, carrier)'s account.
pub struct Accounts {
    pub accounts: BTreeMap<AccountId, Account>,
    pub routes: HashMap<(StoreName, Carrier), AccountId>,
}

impl Accounts {
    /// The clients of `plan`'s accounts, each spending its account's budget in `pool` (when given).
    pub fn build(
        plan: Plan,
        carriers: &CarrierSettings,
        pool: Option<&Db>,
    ) -> anyhow::Result<Self> {
        let mut accounts = BTreeMap::new();
        for (id, (settings, stores)) in plan.accounts {
            let client: Arc<dyn CarrierClient> = match settings {
                AccountSettings::Correios(s) => {
                    let mut c = CorreiosClient::new(s)?;
                    if let Some(pool) = pool {
                        c = c.with_budget(Arc::new(SharedBudget::new(
                            pool.clone(),
                            id.key.clone(),
                            carriers.correios_rate,
                        )));
                    }
                    Arc::new(c)
                }
                AccountSettings::Jadlog(s) => {
                    let mut c = JadlogClient::new(s)?;
                    if let Some(pool) = pool {
                        c = c.with_budget(Arc::new(SharedBudget::new(
                            pool.clone(),
                            id.key.clone(),
                            carriers.jadlog_rate,
                        )));
                    }
                    Arc::new(c)
                }
            };
            accounts.insert(id, Account { client, stores });
        }
        Ok(Self {
            accounts,
            routes: plan.routes,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn carriers(global_correios: bool, global_jadlog: bool) -> CarrierSettings {
        let common = CorreiosSettings {
            base_url: "http://127.0.0.1:1".into(),
            user: String::new(),
            access_code: String::new().into(),
            postage_card: None,
            timeout: std::time::Duration::from_secs(1),
            time_zone: chrono_tz::America::Sao_Paulo,
            batch: 50,
            retry: tracking_carriers::CallRetry::default(),
            max_body: 1 << 20,
        };
        let jadlog_common = JadlogSettings {
            base_url: "http://127.0.0.1:1".into(),
            token: String::new().into(),
            timeout: std::time::Duration::from_secs(1),
            time_zone: chrono_tz::America::Sao_Paulo,
            batch: 50,
            retry: tracking_carriers::CallRetry::default(),
            max_body: 1 << 20,
        };
        CarrierSettings {
            correios: global_correios.then(|| CorreiosSettings {
                user: "global".into(),
                access_code: "global-code".to_owned().into(),
                ..common.clone()
            }),
            jadlog: global_jadlog.then(|| JadlogSettings {
                token: "global-token".to_owned().into(),
                ..jadlog_common.clone()
            }),
            correios_common: common,
            jadlog_common,
            correios_rate: super::super::Rate {
                per_second: 1.0,
                burst: 1.0,
            },
            jadlog_rate: super::super::Rate {
                per_second: 1.0,
                burst: 1.0,
            },
        }
    }

    fn name(s: &str) -> StoreName {
        StoreName::parse(s).unwrap()
    }

    const FILE: &str = r#"
[[store]]
name = "loja-a"
correios = { user = "empresa-a", access_code = "code-a", postage_card = "111" }
jadlog = { token = "jadlog-shared" }

[[store]]
name = "loja-b"
correios = { user = "empresa-a", access_code = "code-a", postage_card = "111" }
jadlog = { token = "jadlog-shared" }

[[store]]
name = "loja-c"
correios = { user = "empresa-c", access_code = "code-c" }

[[store]]
name = "loja-d"
"#;

    #[test]
    fn stores_naming_one_account_share_it_and_others_fall_back_to_the_global_one() {
        let stores = Stores::parse(FILE, Some(&BTreeSet::new())).unwrap();
        let plan = plan(&stores, &carriers(true, false));
        let route = |s: &str, c: Carrier| plan.routes.get(&(name(s), c)).map(|a| a.key.as_str());
        assert_eq!(
            route("loja-a", Carrier::Correios),
            Some("correios:empresa-a:111")
        );
        assert_eq!(
            route("loja-b", Carrier::Correios),
            Some("correios:empresa-a:111")
        );
        assert_eq!(
            route("loja-c", Carrier::Correios),
            Some("correios:empresa-c")
        );
        assert_eq!(route("loja-d", Carrier::Correios), Some("correios:global"));
        assert_eq!(route("default", Carrier::Correios), Some("correios:global"));
        assert_eq!(route("loja-a", Carrier::Jadlog), Some("jadlog:loja-a"));
        assert_eq!(
            route("loja-b", Carrier::Jadlog),
            Some("jadlog:loja-a"),
            "same token, one account"
        );
        assert_eq!(
            route("loja-d", Carrier::Jadlog),
            None,
            "no global Jadlog token"
        );
        let shared = &plan.accounts[&AccountId {
            carrier: Carrier::Correios,
            key: "correios:empresa-a:111".into(),
        }];
        assert_eq!(shared.1, vec![name("loja-a"), name("loja-b")]);
        assert_eq!(plan.accounts.len(), 4);
        let shown = format!("{plan:?}");
        for secret in ["code-a", "code-c", "global-code", "jadlog-shared"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
    }

    #[test]
    fn without_a_stores_file_the_default_store_uses_the_global_accounts_as_before() {
        let plan = plan(&Stores::single(), &carriers(true, true));
        assert_eq!(plan.accounts.len(), 2);
        let keys: Vec<&str> = plan.accounts.keys().map(|a| a.key.as_str()).collect();
        assert_eq!(keys, ["correios:global", "jadlog"]);
        let plan = super::plan(&Stores::single(), &carriers(false, false));
        assert!(plan.accounts.is_empty() && plan.routes.is_empty());
    }
}
