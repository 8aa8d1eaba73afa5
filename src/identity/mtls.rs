//! The `mtls` source: the caller is the peer of the TLS connection, as Envoy reports it.
//!
//! Envoy's `source.principal` ([`Request::principal`]) is the URI SAN of the validated peer
//! certificate (a SPIFFE id such as `spiffe://cluster.local/ns/shop/sa/orders`), or its subject
//! when there is no URI SAN. A principal listed in the settings is a user with that principal as
//! id and the configured groups; one not listed is a user without groups when `allow_unlisted`
//! is on, and [`Resolution::Invalid`] otherwise. No principal: [`Resolution::NoCredential`].
//!
//! Security: the principal is only as trustworthy as Envoy's downstream TLS validation. Envoy
//! must verify client certificates against the trusted CA (a `validation_context` with the
//! CA, not `ACCEPT_UNTRUSTED`); otherwise any client chooses its own principal. Behind another
//! proxy, the principal is that proxy's, not the end client's. README says so.
//!
//! Called by the [`Resolver`](super::Resolver). No I/O; never cached (a map lookup is cheaper).

use std::collections::HashMap;
use std::sync::Arc;

use super::{BoxFuture, Context, Failure, Resolution, Source, User};
use crate::config::sources::MtlsSource;
use crate::request::Request;

pub struct Mtls {
    /// Listed principals and the users they are, built once.
    principals: HashMap<String, Arc<User>>,
    allow_unlisted: bool,
}

impl Mtls {
    /// Validates the settings; every problem is reported, joined with `; `, each naming its
    /// field (`mtls.principals[1].principal: ...`).
    pub fn new(settings: &MtlsSource) -> Result<Mtls, Vec<String>> {
        let mut errors = Vec::new();
        let mut principals = HashMap::with_capacity(settings.principals.len());
        for (i, entry) in settings.principals.iter().enumerate() {
            if entry.principal.is_empty() {
                errors.push(format!("mtls.principals[{i}].principal: must not be empty"));
                continue;
            }
            if let Some(first) = settings.principals[..i]
                .iter()
                .position(|p| p.principal == entry.principal)
            {
                errors.push(format!(
                    "mtls.principals[{i}].principal: {:?} is already listed at principals[{first}]",
                    entry.principal
                ));
                continue;
            }
            match User::new(
                entry.principal.clone(),
                entry.groups.clone(),
                Vec::new(),
                "{}".to_owned(),
            ) {
                Ok(user) => {
                    principals.insert(entry.principal.clone(), Arc::new(user));
                }
                Err(e) => errors.push(format!("mtls.principals[{i}]: {e}")),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(Mtls {
            principals,
            allow_unlisted: settings.allow_unlisted,
        })
    }

    fn read(&self, request: &Request) -> Resolution {
        let principal = request.principal.as_str();
        if principal.is_empty() {
            return Resolution::NoCredential;
        }
        if let Some(user) = self.principals.get(principal) {
            return Resolution::User(Arc::clone(user));
        }
        if !self.allow_unlisted {
            // A principal names a workload, it is not a secret: it may be logged.
            return Resolution::Invalid(Failure::new(
                "mtls_unknown_principal",
                format!("principal {principal:?} is not listed"),
            ));
        }
        match User::new(
            principal.to_owned(),
            Vec::new(),
            Vec::new(),
            "{}".to_owned(),
        ) {
            Ok(user) => Resolution::User(Arc::new(user)),
            Err(e) => Resolution::Invalid(Failure::new("mtls_principal_invalid", e.to_string())),
        }
    }
}

impl Source for Mtls {
    fn name(&self) -> &'static str {
        "mtls"
    }

    fn resolve<'a>(
        &'a self,
        request: &'a Request,
        _context: &'a Context,
    ) -> BoxFuture<'a, Resolution> {
        Box::pin(std::future::ready(self.read(request)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sources::MtlsPrincipal;

    fn settings(principals: &[(&str, &[&str])], allow_unlisted: bool) -> MtlsSource {
        MtlsSource {
            name: None,
            principals: principals
                .iter()
                .map(|(p, g)| MtlsPrincipal {
                    principal: (*p).into(),
                    groups: g.iter().map(|g| (*g).to_owned()).collect(),
                })
                .collect(),
            allow_unlisted,
        }
    }

    #[test]
    fn constructor_errors_name_the_entry() {
        let Err(e) = Mtls::new(&settings(
            &[("a", &[]), ("", &[]), ("a", &[]), ("b", &["x,y"])],
            false,
        )) else {
            panic!("invalid settings accepted")
        };
        let e = e.join("; ");
        assert!(
            e.contains("mtls.principals[1].principal: must not be empty"),
            "{e}"
        );
        assert!(e.contains("mtls.principals[2].principal"), "{e}");
        assert!(
            e.contains("mtls.principals[3]: a group name holds a comma"),
            "{e}"
        );
        assert!(Mtls::new(&settings(&[], true)).is_ok());
    }
}
