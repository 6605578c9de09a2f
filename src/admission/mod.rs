//! Admission: whether a request may run, and with what, decided once and
//! before anything that runs tasks sees it.
//!
//! A request becomes an allowed [`Plan`]: the catalog entry looked up, the
//! server's policy narrowed by the named client's rules, every default
//! filled in; and the quotas that apply to it are taken. The executor gets
//! only the plan, so no runtime can skip or weaken a rule: it never sees
//! one.

mod client;
mod http;
mod policy;
mod quota;

pub use client::{glob_matches, ClientPolicy, ClientRules};
pub use policy::Policy;
pub use quota::{Quota, Scope};

use tokio::sync::OwnedSemaphorePermit;

use crate::catalog::Catalog;
use crate::executor::{EntryRef, Plan};
use crate::protocol::TaskSpec;
use crate::task::TaskError;

/// The server's rules for what may run: its catalog and its policy.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    catalog: Catalog,
    policy: Policy,
}

/// An admitted task: its plan, and the quota permits it holds while it runs.
#[derive(Debug)]
pub struct Admitted {
    pub plan: Plan,
    pub permits: Vec<OwnedSemaphorePermit>,
}

impl Admission {
    pub fn new(policy: Policy, catalog: Catalog) -> Admission {
        Admission { catalog, policy }
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Takes a place in each of `quotas`, in order, then plans the task;
    /// the first refusal is the answer, and nothing is held after one.
    pub fn admit(
        &self,
        spec: TaskSpec,
        client: Option<&ClientRules>,
        quotas: &[&Quota],
    ) -> Result<Admitted, TaskError> {
        let permits = quotas
            .iter()
            .map(|quota| quota.take())
            .collect::<Result<Vec<_>, _>>()?;
        let plan = self.plan(spec, client)?;
        Ok(Admitted { plan, permits })
    }

    /// The plan for `spec` by the rules alone (no quota): a named task is
    /// looked up in the catalog, then the server's policy (narrowed by
    /// `client`'s rules) decides every setting.
    pub fn plan(&self, spec: TaskSpec, client: Option<&ClientRules>) -> Result<Plan, TaskError> {
        let entry = self.catalog.entry_of(&spec).map(|(name, entry)| EntryRef {
            name: name.to_owned(),
            reuse: entry.reuse,
            reset: entry.reset,
            client: client.map(|c| c.name.clone()),
        });
        let spec = self.catalog.resolve(spec)?;
        policy::plan(spec, &self.policy, client, entry)
    }

    /// The catalog entries to keep warm: each one's plan (as a request with
    /// no arguments would get it) and how many containers.
    pub fn warm_plans(&self) -> Vec<(Plan, u32)> {
        let mut plans = Vec::new();
        for (name, entry) in &self.catalog.entries {
            if entry.warm == 0 {
                continue;
            }
            let spec = TaskSpec::named(name.clone(), Vec::<String>::new());
            match self.plan(spec, None) {
                Ok(plan) => plans.push((plan, entry.warm)),
                Err(e) => tracing::warn!(task = %name, error = %e, "catalog entry not kept warm"),
            }
        }
        plans
    }
}
