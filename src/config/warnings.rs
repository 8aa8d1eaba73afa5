//! Settings that are valid but weaken a protection: accepted (some identity providers leave no
//! choice), never silently. `check-config` prints them and `serve` logs each at `warn` when it
//! starts. A setting that removes a protection outright is refused by its validator instead
//! (e.g. a `jwt` source's `min_refresh_interval` below one second).

use super::Settings;
use super::sources::SourceSettings;

/// One sentence per weakened protection, naming the setting.
pub fn warnings(settings: &Settings) -> Vec<String> {
    let mut found = source_warnings(&settings.sources);
    found.extend(cache_warning(&settings.identity_cache));
    found
}

/// `stale_if_error` trades freshness for availability: said once, at start.
fn cache_warning(cache: &super::CacheSettings) -> Option<String> {
    (!cache.stale_if_error.is_zero()).then(|| {
        format!(
            "identity cache stale_if_error {:?}: while the identity provider is unavailable, a \
             user removed or changed there keeps the access they had for up to the TTL ({:?}) \
             plus stale_if_error",
            cache.stale_if_error, cache.ttl
        )
    })
}

fn source_warnings(sources: &[SourceSettings]) -> Vec<String> {
    let mut found = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        // A user-info source asked before an ldap source forwards the Basic header it proxies.
        if let SourceSettings::Userinfo(userinfo) = source
            && userinfo
                .headers_to_proxy
                .iter()
                .any(|h| h.eq_ignore_ascii_case("authorization"))
            && let Some(ldap) = sources[index..]
                .iter()
                .find(|s| matches!(s, SourceSettings::Ldap(_)))
        {
            found.push(format!(
                "userinfo source \"{}\" is asked before ldap source \"{}\" and forwards the \
                 authorization header: HTTP Basic passwords reach {}; list the ldap source first",
                source.name(),
                ldap.name(),
                userinfo.url
            ));
        }
        if let SourceSettings::Ldap(ldap) = source
            && ldap.allow_plaintext
            && !ldap.start_tls
            && ldap.url.starts_with("ldap://")
        {
            found.push(format!(
                "ldap source \"{}\": allow_plaintext sends every password to {} in clear",
                source.name(),
                ldap.url
            ));
        }
        let SourceSettings::Jwt(jwt) = source else {
            continue;
        };
        if jwt.min_refresh_interval.0 < std::time::Duration::from_secs(1) {
            found.push(format!(
                "jwt source \"{}\": min_refresh_interval {:?} lets tokens with unknown key ids \
                 make more than one key fetch a second from the identity provider",
                source.name(),
                jwt.min_refresh_interval.0
            ));
        }
        if jwt.typ.is_none() {
            found.push(format!(
                "jwt source \"{}\" requires no `typ` header: any token of issuer {} with the \
                 right audience is accepted, an ID token too where an access token is meant; \
                 set `typ` (e.g. at+jwt) if the identity provider sets it",
                source.name(),
                jwt.issuer
            ));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warnings(yaml: &str) -> Vec<String> {
        let source: SourceSettings = serde_yaml_ng::from_str(yaml).expect("a source");
        source_warnings(&[source])
    }

    #[test]
    fn a_key_refetch_interval_under_a_second_is_named() {
        let found = warnings(
            "type: jwt\nissuer: https://idp.example\ntyp: jwt\nmin_refresh_interval: 200ms\n",
        );
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("min_refresh_interval 200ms"), "{found:?}");
    }

    #[test]
    fn a_jwt_source_without_typ_is_named_and_one_with_typ_is_not() {
        let found = warnings("type: jwt\nname: idp\nissuer: https://idp.example\n");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(
            found[0].contains("\"idp\"") && found[0].contains("typ"),
            "{found:?}"
        );
        let strict = warnings("type: jwt\nissuer: https://idp.example\ntyp: at+jwt\n");
        assert_eq!(strict, Vec::<String>::new());
    }

    #[test]
    fn plain_ldap_is_named() {
        let base = "type: ldap\nuser_dn_template: \"uid={username},dc=x\"\n";
        let found = warnings(&format!(
            "{base}url: ldap://127.0.0.1:389\nallow_plaintext: true\n"
        ));
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("in clear"), "{found:?}");
        let tls = warnings(&format!(
            "{base}url: ldap://ldap.example\nstart_tls: true\nallow_plaintext: true\n"
        ));
        assert_eq!(tls, Vec::<String>::new());
    }

    #[test]
    fn a_userinfo_source_before_an_ldap_source_is_named() {
        let source = |yaml: &str| serde_yaml_ng::from_str::<SourceSettings>(yaml).expect("source");
        let ldap = source(
            "type: ldap\nurl: ldaps://ldap.example\nca_file: ca.pem\nuser_dn_template: \"uid={username},dc=x\"\n",
        );
        let userinfo = source("type: userinfo\nurl: http://auth.example/me\n");
        let found = source_warnings(&[userinfo.clone(), ldap.clone()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains("Basic passwords reach"), "{found:?}");
        assert_eq!(source_warnings(&[ldap, userinfo]), Vec::<String>::new());
    }

    #[test]
    fn stale_if_error_is_named_when_set() {
        let cache = |stale| super::super::CacheSettings {
            ttl: std::time::Duration::from_secs(30),
            negative_ttl: std::time::Duration::from_secs(5),
            max_entries: 10,
            stale_if_error: stale,
        };
        assert_eq!(cache_warning(&cache(std::time::Duration::ZERO)), None);
        let found = cache_warning(&cache(std::time::Duration::from_secs(300))).expect("named");
        assert!(found.contains("stale_if_error 300s"), "{found}");
    }
}
