//! The `ldap` identity source against a real OpenLDAP directory (tests/ldap_support: Debian's
//! slapd, seeded with slapadd): checkpoint is started on port 0 with a native configuration and
//! asked over gRPC; once, a client goes through real Envoy over TLS and slapd is reached over
//! `ldaps://`. Users (ldap_support::SEED): alice (admins, staff), bob (staff), `o'neil, jr (*)`
//! (staff through `member`, r&d through `uniqueMember`), nopass (no password at all).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::string_slice
)] // Tests: a failure should stop loudly.

mod e2e_support;
mod ldap_support;
mod support;

use std::time::Duration;

use e2e_support::{NativeAddrs, NativeStack, Reply};
use ldap_support::{
    Directory, GROUPS, ODD_DN, ODD_USER, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, basic, password,
};
use support::{Answer, Server, answer, request};

const REALM: &str = "Example staff";

/// `/admin` needs the admins group, `/private` the staff group, `/public` anyone.
const RULES: &str = r#"
    /admin:
      GET: { authorization: { expression: "groups.admins", public: false } }
    /private:
      GET: { authorization: { expression: "groups.staff", public: false } }
    /public:
      GET: { authorization: { expression: "true", public: true } }"#;

/// A native configuration with `source` (YAML lines under `identity.sources`, indented) and the
/// given identity cache lifetimes.
fn config(source: &str, cache: &str) -> String {
    format!(
        "version: 1\nserver: {{ shutdown_delay: 0 }}\nrules:\n  inline:{RULES}\nidentity:\n  cache: {cache}\n  sources:\n{source}\n"
    )
}

/// The search-mode source: service account, StartTLS with the test CA, groups from a search
/// for `member`/`uniqueMember`.
fn search_source(directory: &Directory, ttl: &str) -> String {
    format!(
        r#"    - type: ldap
      url: "{url}"
      start_tls: true
      ca_file: "{ca}"
      realm: "{REALM}"
      bind_dn: "{SERVICE_DN}"
      bind_password: "{SERVICE_PASSWORD}"
      user_search: {{ base: "{PEOPLE}", filter: "(&(objectClass=inetOrgPerson)(uid={{username}}))" }}
      groups: {{ search: {{ base: "{GROUPS}" }} }}
      attributes: {{ user_id: uid, properties: [mail, cn] }}
      timeout: 5s
      max_connections: 2
      {ttl}"#,
        url = directory.url(),
        ca = directory.ca_file().display(),
    )
}

async fn check(server: &Server, path: &str, authorization: Option<&str>) -> Answer {
    let headers: Vec<(&str, &str)> = authorization
        .map(|value| ("authorization", value))
        .into_iter()
        .collect();
    answer(&server.check(request("GET", path, &headers)).await)
}

async fn login(server: &Server, path: &str, user: &str, password: &str) -> Answer {
    check(server, path, Some(&basic(user, password))).await
}

fn assert_refused(answer: &Answer, what: &str) {
    assert_eq!(answer.http_status, 401, "{what}: {answer:?}");
    assert_eq!(
        answer.headers.get("www-authenticate").map(String::as_str),
        Some(format!("Basic realm=\"{REALM}\"").as_str()),
        "{what}: {answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_are_checked_by_binding_to_the_directory() {
    let directory = Directory::start().await;
    let server = Server::start_native(&config(&search_source(&directory, ""), "{}")).await;

    let alice = login(&server, "/admin", "alice", &password("alice")).await;
    assert_eq!(alice.http_status, 200, "{alice:?}");
    assert_eq!(alice.headers["miauserid"], "alice");
    assert_eq!(alice.headers["miausergroups"], "admins,staff");
    assert_eq!(
        alice.headers["miauserproperties"],
        r#"{"cn":"Alice Liddell","mail":"alice@example.org"}"#
    );
    let bob = login(&server, "/private", "bob", &password("bob")).await;
    assert_eq!(
        (bob.http_status, bob.headers["miausergroups"].as_str()),
        (200, "staff"),
        "{bob:?}"
    );
    assert_eq!(
        login(&server, "/admin", "bob", &password("bob"))
            .await
            .http_status,
        403
    );
    // A name special in DNs and in filters alike; a group found through uniqueMember.
    let odd = login(&server, "/private", ODD_USER, &password(ODD_USER)).await;
    assert_eq!(odd.http_status, 200, "{odd:?}");
    assert_eq!(odd.headers["miauserid"], ODD_USER);
    assert_eq!(odd.headers["miausergroups"], "r&d,staff");

    assert_refused(
        &login(&server, "/private", "alice", "wrong").await,
        "wrong password",
    );
    assert_refused(
        &login(&server, "/private", "alice", &password("bob")).await,
        "another user's password",
    );
    assert_refused(
        &login(&server, "/private", "carol", "carol-password").await,
        "unknown user",
    );
    assert_refused(
        &login(&server, "/private", "nopass", "anything").await,
        "an entry without a password",
    );
    // Security: an empty password would be an unauthenticated bind, which slapd accepts.
    for user in ["alice", "nopass", "carol"] {
        assert_refused(
            &login(&server, "/private", user, "").await,
            &format!("empty password for {user}"),
        );
    }
    // Security: the user name is escaped into the filter, so these find nobody.
    for user in ["*)(uid=*", "*", "alice)(uid=*", "*)(|(uid=*"] {
        assert_refused(
            &login(&server, "/private", user, &password("alice")).await,
            &format!("injection {user:?}"),
        );
    }
    assert_refused(
        &check(&server, "/private", Some("Basic not-base64!")).await,
        "malformed credentials",
    );
    // Even a public rule refuses a wrong password.
    assert_refused(
        &login(&server, "/public", "alice", "wrong").await,
        "wrong password on a public rule",
    );
    // No credential at all: the challenge offers the Basic login.
    let none = check(&server, "/private", None).await;
    assert_eq!(none.http_status, 401, "{none:?}");
    assert_eq!(
        none.headers["www-authenticate"],
        format!("Bearer, Basic realm=\"{REALM}\"")
    );
    assert_eq!(check(&server, "/public", None).await.http_status, 200);
}

/// A DN template (RFC 4514 escaping), no service account, plain `ldap://` (explicitly allowed),
/// groups from an attribute of DNs (`seeAlso` standing in for `memberOf`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dn_template_and_a_group_attribute_work_too() {
    let directory = Directory::start().await;
    let source = format!(
        r#"    - type: ldap
      url: "{url}"
      allow_plaintext: true
      realm: "{REALM}"
      user_dn_template: "uid={{username}},{PEOPLE}"
      groups: {{ attribute: seeAlso }}"#,
        url = directory.url(),
    );
    let server = Server::start_native(&config(&source, "{}")).await;
    let alice = login(&server, "/admin", "alice", &password("alice")).await;
    assert_eq!(alice.http_status, 200, "{alice:?}");
    assert_eq!(alice.headers["miausergroups"], "admins,staff");
    assert_eq!(alice.headers["miauserproperties"], "{}");
    let odd = login(&server, "/public", ODD_USER, &password(ODD_USER)).await;
    assert_eq!(odd.http_status, 200, "{odd:?}");
    assert_eq!(odd.headers["miauserid"], ODD_USER);
    assert_eq!(odd.headers["miausergroups"], "r&d");
    assert_refused(
        &login(&server, "/private", "alice", "wrong").await,
        "wrong password",
    );
    assert_refused(
        &login(&server, "/private", "carol", "x").await,
        "unknown user",
    );
    assert_refused(
        &login(&server, "/private", "alice", "").await,
        "empty password",
    );
    // A user name that would add components to the DN if it were not escaped.
    assert_refused(
        &login(&server, "/private", "alice,ou=people", &password("alice")).await,
        "DN injection",
    );
    assert_eq!(ODD_DN.matches("\\,").count(), 1);
}

/// Groups from `memberOf`, as OpenLDAP's memberof overlay maintains it (for a group added while
/// slapd runs; the seed's groups predate the overlay's bookkeeping).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_come_from_member_of() {
    let directory = Directory::start().await;
    directory.modify(&format!(
        "dn: cn=auditors,{GROUPS}\nchangetype: add\nobjectClass: groupOfNames\ncn: auditors\nmember: uid=alice,{PEOPLE}\nmember: {ODD_DN}\n"
    ));
    let source = search_source(&directory, "").replace(
        &format!("groups: {{ search: {{ base: \"{GROUPS}\" }} }}"),
        "groups: { attribute: memberOf }",
    );
    assert!(source.contains("attribute: memberOf"), "{source}");
    let server = Server::start_native(&config(&source, "{}")).await;
    for user in ["alice", ODD_USER] {
        let answer = login(&server, "/public", user, &password(user)).await;
        assert_eq!(answer.http_status, 200, "{user}: {answer:?}");
        assert_eq!(answer.headers["miausergroups"], "auditors", "{user}");
    }
    let bob = login(&server, "/public", "bob", &password("bob")).await;
    assert_eq!(bob.http_status, 200, "{bob:?}");
    assert!(!bob.headers.contains_key("miausergroups"), "{bob:?}");
}

/// The directory down: a 503 on a private rule (never a 401, never anonymous), anonymous on a
/// public one; back up, logins work again on fresh connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_directory_is_503_never_401() {
    let mut directory = Directory::start().await;
    let server = Server::start_native(&config(&search_source(&directory, ""), "{}")).await;
    assert_eq!(
        login(&server, "/private", "bob", &password("bob"))
            .await
            .http_status,
        200
    );
    directory.stop();
    for (user, pw) in [("alice", password("alice")), ("alice", "wrong".into())] {
        let down = login(&server, "/private", user, &pw).await;
        assert_eq!(down.http_status, 503, "{user} {pw}: {down:?}");
        assert!(!down.headers.contains_key("www-authenticate"), "{down:?}");
        let public = login(&server, "/public", user, &pw).await;
        assert_eq!(public.http_status, 200, "{public:?}");
        assert!(
            !public.headers.contains_key("miauserid"),
            "anonymous on a public rule: {public:?}"
        );
    }
    directory.restart().await;
    let back = login(&server, "/admin", "alice", &password("alice")).await;
    assert_eq!(back.http_status, 200, "{back:?}");
}

/// A hung directory: the login is cut to the Check's own deadline, so the answer (a 503) reaches
/// the caller before it gives up, although the source's timeout is longer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_directory_is_cut_to_the_checks_deadline() {
    let directory = Directory::start().await;
    let source = search_source(&directory, "").replace("timeout: 5s", "timeout: 30s");
    let server = Server::start_native(&config(&source, "{}")).await;
    directory.freeze();
    let answer = answer(
        &server
            .check_with_deadline(
                request(
                    "GET",
                    "/private",
                    &[("authorization", &basic("bob", &password("bob")))],
                ),
                Some(Duration::from_millis(800)),
            )
            .await,
    );
    directory.resume();
    assert_eq!(answer.http_status, 503, "{answer:?}");
    assert_eq!(
        login(&server, "/private", "bob", &password("bob"))
            .await
            .http_status,
        200
    );
}

/// At most `max_connections` (2) connections are open, however many logins run at once; they
/// are reused afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_pooled_and_bounded() {
    let directory = Directory::start().await;
    let server = Server::start_native(&config(&search_source(&directory, ""), "{}")).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..12 {
        let mut client = server.client().await;
        // Distinct wrong passwords: no two share a cache entry, each one is a bind.
        let authorization = basic("alice", &format!("wrong-{i}"));
        tasks.spawn(async move {
            let check = request(
                "GET",
                "/private",
                &[("authorization", authorization.as_str())],
            );
            answer(&client.check(check).await.expect("Check").into_inner()).http_status
        });
    }
    let mut statuses = Vec::new();
    while let Some(status) = tasks.join_next().await {
        statuses.push(status.expect("task"));
    }
    assert_eq!(statuses, vec![401; 12]);
    let open = directory.client_connections();
    assert!((1..=2).contains(&open), "{open} connections open");
    assert_eq!(
        login(&server, "/private", "bob", &password("bob"))
            .await
            .http_status,
        200
    );
    assert!(directory.client_connections() <= 2);
}

/// Group and password changes take effect once the source's short TTLs pass; a refusal is
/// remembered only for the negative TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_changes_take_effect_after_the_ttl() {
    let directory = Directory::start().await;
    let ttl = "cache_ttl: 1s\n      negative_ttl: 1s";
    let server = Server::start_native(&config(&search_source(&directory, ttl), "{}")).await;
    let past_ttl = || tokio::time::sleep(Duration::from_millis(1500));

    assert_eq!(
        login(&server, "/private", "alice", &password("alice"))
            .await
            .http_status,
        200
    );
    directory.modify(&format!(
        "dn: cn=staff,{GROUPS}\nchangetype: modify\ndelete: member\nmember: uid=alice,{PEOPLE}\n"
    ));
    past_ttl().await;
    let removed = login(&server, "/private", "alice", &password("alice")).await;
    assert_eq!(removed.http_status, 403, "{removed:?}");
    let admin = login(&server, "/admin", "alice", &password("alice")).await;
    assert_eq!(
        (
            admin.http_status,
            admin.headers.get("miausergroups").map(String::as_str)
        ),
        (200, Some("admins")),
        "{admin:?}"
    );

    // The new password is refused before the change (and that refusal is cached)...
    assert_refused(
        &login(&server, "/admin", "alice", "new-password").await,
        "the password before it is set",
    );
    directory.modify(&format!(
        "dn: uid=alice,{PEOPLE}\nchangetype: modify\nreplace: userPassword\nuserPassword: new-password\n"
    ));
    past_ttl().await;
    // ...and accepted once the negative TTL has passed; the old one is refused.
    assert_eq!(
        login(&server, "/admin", "alice", "new-password")
            .await
            .http_status,
        200
    );
    assert_refused(
        &login(&server, "/admin", "alice", &password("alice")).await,
        "the old password",
    );
}

/// Through real Envoy over TLS, with the directory over `ldaps://`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_basic_login_through_envoy_over_ldaps() {
    let directory = Directory::start().await;
    let (url, ca) = (directory.ldaps_url(), directory.ca_file());
    let stack = NativeStack::start(|addrs: &NativeAddrs| {
        format!(
            r#"
version: 1
server: {{ grpc_addr: "{grpc}", http_addr: "{http}", shutdown_delay: 0 }}
rules:
  inline:{RULES}
identity:
  sources:
    - type: ldap
      url: "{url}"
      ca_file: "{ca}"
      realm: "{REALM}"
      bind_dn: "{SERVICE_DN}"
      bind_password: "{SERVICE_PASSWORD}"
      user_search: {{ base: "{PEOPLE}" }}
      groups: {{ search: {{ base: "{GROUPS}" }} }}
      attributes: {{ properties: [mail] }}
"#,
            grpc = addrs.grpc_addr,
            http = addrs.http_addr,
            ca = ca.display(),
        )
    })
    .await;
    let get = |path: &str, credentials: Option<(&str, &str)>| {
        let mut request = stack.client.get(stack.url(path));
        if let Some((user, pw)) = credentials {
            request = request.header("authorization", basic(user, pw));
        }
        async move { Reply::from(request.send().await.expect("request through Envoy")).await }
    };
    let alice = get("/admin", Some(("alice", &password("alice")))).await;
    assert_eq!(alice.status, 200, "{alice:?}");
    assert!(alice.reached_upstream(), "{alice:?}");
    assert_eq!(alice.upstream_header("miauserid"), Some("alice"));
    assert_eq!(alice.upstream_header("miausergroups"), Some("admins,staff"));
    assert_eq!(
        alice.upstream_header("miauserproperties"),
        Some(r#"{"mail":"alice@example.org"}"#)
    );
    let wrong = get("/admin", Some(("alice", "wrong"))).await;
    assert_eq!(wrong.status, 401, "{wrong:?}");
    assert!(!wrong.reached_upstream());
    assert_eq!(
        wrong.header("www-authenticate"),
        Some(format!("Basic realm=\"{REALM}\"").as_str())
    );
    let none = get("/admin", None).await;
    assert_eq!(none.status, 401, "{none:?}");
    assert_eq!(
        none.header("www-authenticate"),
        Some(format!("Bearer, Basic realm=\"{REALM}\"").as_str())
    );
}
