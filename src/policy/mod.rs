//! Stage 3: policy. Decides, from a rule's compiled expression and what is known of the caller,
//! whether a request is allowed. Called by the pipeline after `identity::resolve`.
//!
//! Pure: no I/O, no clock, no async. Everything it needs arrives as arguments.

pub mod expr;

pub use expr::Expression;

/// What an expression may look at. Borrowed from the identity and the request, never copied.
#[derive(Debug, Clone, Copy, Default)]
pub struct Facts<'a> {
    /// The caller's groups; empty for an anonymous caller.
    pub groups: &'a [String],
    /// The caller's permissions (the identity provider's and those RBAC bindings grant on the
    /// rule's resource); empty for an anonymous caller.
    pub permissions: &'a [String],
    /// The caller's effective RBAC roles on the rule's resource, inherited ones included.
    pub roles: &'a [String],
    /// The value of the client-type header, `""` when absent.
    pub client_type: &'a str,
    /// Whether the request carries the backoffice marker.
    pub is_backoffice: bool,
}

/// One `authorization` (or `backofficeAuthorization`) block of a rule, compiled.
#[derive(Debug, Clone)]
pub struct Policy {
    pub expression: Expression,
    /// `true` lets anonymous callers through when the expression holds.
    pub public: bool,
}

/// What the policy stage concludes about a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// The caller is anonymous and the rule needs a logged-in user (or the public rule's
    /// expression is false for an anonymous caller): 401.
    LoginRequired,
    /// A logged-in user for whom the expression is false: 403.
    Forbidden,
}

/// Decides a request. `logged_in` says whether `facts` describe a known user.
pub fn evaluate(policy: &Policy, logged_in: bool, facts: &Facts<'_>) -> Verdict {
    let holds = policy.expression.evaluate(facts);
    match (logged_in, holds) {
        (true, true) => Verdict::Allow,
        (true, false) => Verdict::Forbidden,
        (false, true) if policy.public => Verdict::Allow,
        (false, _) => Verdict::LoginRequired,
    }
}

#[cfg(test)]
mod verdict_tests {
    use super::*;

    fn policy(expression: &str, public: bool) -> Policy {
        Policy {
            expression: Expression::compile(expression).expect("valid expression"),
            public,
        }
    }

    #[test]
    fn the_mia_response_table() {
        let admin = ["admin".to_owned()];
        let user = Facts {
            groups: &admin,
            ..Facts::default()
        };
        let anonymous = Facts::default();
        let cases = [
            // (expression, public, logged in, facts, verdict)
            ("true", true, false, anonymous, Verdict::Allow),
            ("false", true, false, anonymous, Verdict::LoginRequired),
            ("true", false, false, anonymous, Verdict::LoginRequired),
            ("groups.admin", false, true, user, Verdict::Allow),
            ("groups.other", false, true, user, Verdict::Forbidden),
            ("groups.other", true, true, user, Verdict::Forbidden),
            ("true", true, true, user, Verdict::Allow),
        ];
        for (expression, public, logged_in, facts, want) in cases {
            assert_eq!(
                evaluate(&policy(expression, public), logged_in, &facts),
                want,
                "{expression} public={public} logged_in={logged_in}"
            );
        }
    }
}
