//! The Mia-Platform authorization expression language: `groups.admin && isBackoffice`,
//! `permissions.api.users.get`, `"ops" in groups`, `clientType === 'cms'` and friends.
//!
//! The rule loader compiles every expression once, at start-up, with [`Expression::compile`];
//! a malformed expression is reported with its column so the service refuses to start. The
//! policy stage then calls [`Expression::evaluate`] on every request against the caller's
//! [`Facts`].
//!
//! Evaluation is on the request path, so it must never allocate, never panic and never fail: a
//! group or permission the caller lacks is simply false. Everything that can go wrong (unknown
//! identifiers, bad syntax, hostile input) is caught by `compile`.
//!
//! Grammar, lowest precedence first (JavaScript's order):
//!
//! ```text
//! or         = and ( "||" and )*
//! and        = equality ( "&&" equality )*
//! equality   = membership ( ( "==" | "===" | "!=" | "!==" ) membership )*
//! membership = list "in" set | unary [ "in" set ]      (the unary must be a string literal)
//! unary      = "!" unary | primary
//! primary    = "true" | "false" | string | "clientType" | "isBackoffice"
//!            | set "." name | set "[" string "]" | "(" or ")"
//! list       = "[" [ string ( "," string )* ] "]"
//! set        = "groups" | "permissions" | "roles"
//! ```

use super::Facts;

/// Longest accepted expression, in characters. Real rules are a few dozen characters; the
/// limit bounds the work a hostile or broken rule file can cause at start-up.
const MAX_LEN: usize = 4096;

/// Deepest accepted nesting of parentheses, `!` and chained equalities. Parsing and evaluation
/// recurse, so this bounds their stack use whatever the input.
const MAX_DEPTH: usize = 64;

/// A compiled expression: the syntax tree the policy stage walks, and the text it came from
/// (kept for error messages and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expression {
    source: Box<str>,
    root: Node,
}

/// Why an expression does not compile. `column` counts characters from 1, so it lines up with
/// what an operator sees in an editor, whatever the encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid expression at column {column}: {message}")]
pub struct ExprError {
    /// 1-based position of the offending character, in characters.
    pub column: usize,
    /// Lowercase, no trailing period; names the offending thing.
    pub message: String,
}

impl ExprError {
    fn new(column: usize, message: impl Into<String>) -> Self {
        Self {
            column,
            message: message.into(),
        }
    }
}

impl Expression {
    /// Parses `source` into an expression that can be evaluated without further checks.
    ///
    /// # Errors
    ///
    /// [`ExprError`] with the column of the first problem: empty or oversized input, a lexical
    /// or syntax error, an unknown identifier, or nesting deeper than the limit.
    pub fn compile(source: &str) -> Result<Expression, ExprError> {
        // Security: reject oversized input before looking at it, so a hostile rule file costs
        // nothing more than this bounded scan.
        if source.chars().nth(MAX_LEN).is_some() {
            return Err(ExprError::new(
                MAX_LEN + 1,
                format!("expression is longer than {MAX_LEN} characters"),
            ));
        }
        if source.trim().is_empty() {
            return Err(ExprError::new(1, "expression is empty"));
        }
        let mut parser = Parser::new(source);
        let root = parser.parse_or()?;
        let trailing = parser.next()?;
        if trailing.kind != Kind::End {
            return Err(unexpected(&trailing));
        }
        Ok(Expression {
            source: source.into(),
            root,
        })
    }

    /// Whether the caller described by `facts` satisfies the expression. Pure: no allocation,
    /// no panic, and the same answer for the same facts.
    #[must_use]
    pub fn evaluate(&self, facts: &Facts<'_>) -> bool {
        eval(&self.root, facts).truthy()
    }

    /// Every permission name the expression asks for (`permissions.NAME`,
    /// `"NAME" in permissions`): what the rule loader checks against the RBAC roles.
    #[must_use]
    pub fn permissions_used(&self) -> Vec<&str> {
        fn walk<'a>(node: &'a Node, out: &mut Vec<&'a str>) {
            match node {
                Node::Member {
                    set: Set::Permissions,
                    names,
                } => out.extend(names.iter().map(|n| &**n)),
                Node::Not(inner) => walk(inner, out),
                Node::All(items) | Node::Any(items) => items.iter().for_each(|n| walk(n, out)),
                Node::Equal { left, right, .. } => {
                    walk(left, out);
                    walk(right, out);
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        walk(&self.root, &mut out);
        out
    }

    /// The text the expression was compiled from, exactly as written in the rule file.
    #[must_use]
    pub fn source(&self) -> &str {
        &self.source
    }

    /// Every sub-expression with its value for `facts`, the whole expression first, each one
    /// followed by its parts (`depth` one more): what `checkpoint explain` prints. The root's
    /// value is always [`Expression::evaluate`]'s answer.
    ///
    /// Not on the request path: it parses the source again to learn where each part is written
    /// (the compiled tree keeps no positions, so that `evaluate` walks a small tree), and it
    /// evaluates every part, also those `evaluate` skips (the right of a false `&&`).
    #[must_use]
    pub fn explain(&self, facts: &Facts<'_>) -> Vec<Step> {
        let mut parser = Parser::new(&self.source);
        // The source compiled once, so it compiles again to the same tree.
        let spans = match parser.parse_or() {
            Ok(_) => parser.spans,
            Err(_) => Vec::new(),
        };
        let mut trace = Trace {
            source: &self.source,
            spans,
            next: 0,
            steps: Vec::new(),
        };
        trace.walk(&self.root, facts, 0);
        trace.steps
    }
}

/// The compiled tree printed back as source: the fuzz property that printing and compiling
/// again gives the same tree (`crate::fuzz::expression`).
#[cfg(any(test, fuzzing))]
impl Expression {
    /// The tree as source, with parentheses only where precedence needs them and every
    /// membership in its list form (`["a"] in groups`).
    pub(crate) fn reprint(&self) -> String {
        let mut out = String::new();
        print_node(&self.root, &mut out);
        out
    }

    /// Whether two expressions compiled to the same tree.
    pub(crate) fn same_tree(&self, other: &Expression) -> bool {
        self.root == other.root
    }
}

#[cfg(any(test, fuzzing))]
fn print_node(node: &Node, out: &mut String) {
    let grouped = |node: &Node, wanted: bool, out: &mut String| {
        if wanted {
            out.push('(');
            print_node(node, out);
            out.push(')');
        } else {
            print_node(node, out);
        }
    };
    match node {
        Node::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Node::Str(s) => print_string(s, out),
        Node::ClientType => out.push_str("clientType"),
        Node::IsBackoffice => out.push_str("isBackoffice"),
        Node::Member { set, names } => {
            out.push('[');
            for (i, name) in names.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                print_string(name, out);
            }
            out.push_str("] in ");
            out.push_str(set.as_str());
        }
        Node::Not(inner) => {
            out.push('!');
            let leaf = matches!(
                **inner,
                Node::Bool(_) | Node::Str(_) | Node::ClientType | Node::IsBackoffice | Node::Not(_)
            );
            grouped(inner, !leaf, out);
        }
        Node::All(items) | Node::Any(items) => {
            // `&&` binds tighter than `||`: an `&&` chain inside `||` needs no parentheses.
            let all = matches!(node, Node::All(_));
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(if all { " && " } else { " || " });
                }
                let nested = matches!(item, Node::Any(_)) || (all && matches!(item, Node::All(_)));
                grouped(item, nested, out);
            }
        }
        Node::Equal {
            left,
            right,
            negated,
        } => {
            grouped(left, matches!(**left, Node::All(_) | Node::Any(_)), out);
            out.push_str(if *negated { " != " } else { " == " });
            grouped(
                right,
                matches!(**right, Node::All(_) | Node::Any(_) | Node::Equal { .. }),
                out,
            );
        }
    }
}

#[cfg(any(test, fuzzing))]
fn print_string(value: &str, out: &mut String) {
    out.push('"');
    for c in value.chars() {
        if matches!(c, '"' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// One sub-expression of [`Expression::explain`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Step {
    /// 0 for the whole expression, one more for each level of nesting.
    pub depth: usize,
    /// The sub-expression as written (parentheses around it left out).
    pub text: String,
    pub value: StepValue,
    /// For `permissions.NAME` (and `"NAME" in permissions`): the names the caller holds, so
    /// that an explanation can say where each permission came from.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub permissions_held: Vec<String>,
    /// For `roles.NAME` (and `"NAME" in roles`): the effective roles the caller holds, so that
    /// an explanation can name the RBAC bindings that granted each.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles_held: Vec<String>,
}

/// A sub-expression's value: a boolean, or a string (`clientType`, `'cms'`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum StepValue {
    Bool(bool),
    Str(String),
}

impl std::fmt::Display for StepValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StepValue::Bool(b) => write!(f, "{b}"),
            StepValue::Str(s) => write!(f, "{}", serde_json::Value::from(s.as_str())),
        }
    }
}

/// The walk behind [`Expression::explain`]: the tree in pre-order for the output, the spans
/// in the post-order the parser recorded them in.
struct Trace<'t> {
    source: &'t str,
    spans: Vec<(usize, usize)>,
    next: usize,
    steps: Vec<Step>,
}

impl Trace<'_> {
    fn walk<'a>(&mut self, node: &'a Node, facts: &Facts<'a>, depth: usize) -> Value<'a> {
        let slot = self.steps.len();
        self.steps.push(Step {
            depth,
            text: String::new(),
            value: StepValue::Bool(false),
            permissions_held: Vec::new(),
            roles_held: Vec::new(),
        });
        let value = match node {
            Node::Not(inner) => Value::Bool(!self.walk(inner, facts, depth + 1).truthy()),
            // Every part is walked (collected first), also those `evaluate` skips.
            Node::All(items) => {
                let values: Vec<bool> = items
                    .iter()
                    .map(|n| self.walk(n, facts, depth + 1).truthy())
                    .collect();
                Value::Bool(values.iter().all(|v| *v))
            }
            Node::Any(items) => {
                let values: Vec<bool> = items
                    .iter()
                    .map(|n| self.walk(n, facts, depth + 1).truthy())
                    .collect();
                Value::Bool(values.iter().any(|v| *v))
            }
            Node::Equal {
                left,
                right,
                negated,
            } => {
                let left = self.walk(left, facts, depth + 1);
                let right = self.walk(right, facts, depth + 1);
                Value::Bool((left == right) != *negated)
            }
            leaf => eval(leaf, facts),
        };
        let text = self
            .spans
            .get(self.next)
            .and_then(|&(start, end)| self.source.get(start..end))
            .unwrap_or_default()
            .trim()
            .to_owned();
        self.next += 1;
        let held = |set: Set| match node {
            Node::Member { set: s, names } if *s == set => names
                .iter()
                .filter(|name| set.of(facts).iter().any(|p| p.as_str() == &***name))
                .map(|name| name.to_string())
                .collect(),
            _ => Vec::new(),
        };
        let (held, roles_held) = (held(Set::Permissions), held(Set::Roles));
        if let Some(step) = self.steps.get_mut(slot) {
            step.text = text;
            step.value = match value {
                Value::Bool(b) => StepValue::Bool(b),
                Value::Str(s) => StepValue::Str(s.to_owned()),
            };
            step.permissions_held = held;
            step.roles_held = roles_held;
        }
        value
    }
}

/// The two collections a name can be looked up in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Set {
    Groups,
    Permissions,
    /// The caller's effective RBAC roles.
    Roles,
}

impl Set {
    fn as_str(self) -> &'static str {
        match self {
            Set::Groups => "groups",
            Set::Permissions => "permissions",
            Set::Roles => "roles",
        }
    }

    fn of<'a>(self, facts: &Facts<'a>) -> &'a [String] {
        match self {
            Set::Groups => facts.groups,
            Set::Permissions => facts.permissions,
            Set::Roles => facts.roles,
        }
    }
}

/// The compiled syntax tree. Names are owned here so evaluation only compares borrowed slices.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    Bool(bool),
    Str(Box<str>),
    ClientType,
    IsBackoffice,
    /// True when any of `names` is in the set: `groups.a`, `groups["a"]`, `"a" in groups` and
    /// `["a", "b"] in groups` all compile to this. An empty list is false.
    Member {
        set: Set,
        names: Box<[Box<str>]>,
    },
    Not(Box<Node>),
    /// Chains of `&&` and `||` are kept flat so that a long chain does not make a deep tree.
    All(Box<[Node]>),
    Any(Box<[Node]>),
    Equal {
        left: Box<Node>,
        right: Box<Node>,
        negated: bool,
    },
}

/// What a sub-expression evaluates to. Borrows from the tree or the facts, never owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Value<'a> {
    Bool(bool),
    Str(&'a str),
}

impl Value<'_> {
    /// JavaScript truthiness restricted to our two types: a string is true when non-empty.
    fn truthy(self) -> bool {
        match self {
            Value::Bool(b) => b,
            Value::Str(s) => !s.is_empty(),
        }
    }
}

fn eval<'a>(node: &'a Node, facts: &Facts<'a>) -> Value<'a> {
    match node {
        Node::Bool(b) => Value::Bool(*b),
        Node::Str(s) => Value::Str(s),
        Node::ClientType => Value::Str(facts.client_type),
        Node::IsBackoffice => Value::Bool(facts.is_backoffice),
        Node::Member { set, names } => {
            let have = set.of(facts);
            Value::Bool(
                names
                    .iter()
                    .any(|name| have.iter().any(|h| h.as_str() == &**name)),
            )
        }
        Node::Not(inner) => Value::Bool(!eval(inner, facts).truthy()),
        // `&&` and `||` yield a bool, not one of their operands as JavaScript would: every
        // operand is in a boolean position, and a rule only ever asks for a yes or no.
        Node::All(items) => Value::Bool(items.iter().all(|n| eval(n, facts).truthy())),
        Node::Any(items) => Value::Bool(items.iter().any(|n| eval(n, facts).truthy())),
        Node::Equal {
            left,
            right,
            negated,
        } => {
            // `==` behaves as `===` (and `!=` as `!==`): values compare by type and value,
            // with no JavaScript coercion, so `clientType == true` is simply false.
            let equal = eval(left, facts) == eval(right, facts);
            Value::Bool(equal != *negated)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// A string literal, escapes already decoded.
    Str(String),
    /// `groups.NAME` or `permissions.NAME`; the dotted name is a single string.
    Name(Set, String),
    /// Bare `groups` or `permissions`.
    Set(Set),
    True,
    False,
    ClientType,
    IsBackoffice,
    In,
    Not,
    And,
    Or,
    Eq,
    Ne,
    LParen,
    RParen,
    LBracket,
    RBracket,
    Comma,
    End,
}

#[derive(Debug)]
struct Token<'s> {
    kind: Kind,
    /// 1-based character column of the token's first character.
    col: usize,
    /// The token as written, for error messages.
    text: &'s str,
    /// Byte offsets of the token in the source: where a sub-expression starts and ends, for
    /// [`Expression::explain`].
    start: usize,
    end: usize,
}

fn unexpected(tok: &Token<'_>) -> ExprError {
    let message = match tok.kind {
        Kind::End => "unexpected end of expression".to_owned(),
        Kind::Str(_) => format!("unexpected string {}", tok.text),
        _ => format!("unexpected \"{}\"", tok.text),
    };
    ExprError::new(tok.col, message)
}

fn is_word_start(c: char) -> bool {
    c.is_ascii_alphabetic() || c == '_' || c == '$'
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '$'
}

/// Characters of one segment of a dotted group or permission name. `-` and `:` are allowed
/// because real permission names use them (`orders:read`, `api-v2`).
fn is_name_char(c: char) -> bool {
    is_word_char(c) || c == '-' || c == ':'
}

struct Lexer<'s> {
    src: &'s str,
    /// Byte offset of the next character.
    pos: usize,
    /// 1-based character column of the next character.
    col: usize,
}

impl<'s> Lexer<'s> {
    fn new(src: &'s str) -> Self {
        Self {
            src,
            pos: 0,
            col: 1,
        }
    }

    fn rest(&self) -> &'s str {
        self.src.get(self.pos..).unwrap_or("")
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        self.col += 1;
        Some(c)
    }

    fn bump_if(&mut self, want: char) -> bool {
        if self.peek() == Some(want) {
            self.bump();
            true
        } else {
            false
        }
    }

    fn bump_while(&mut self, pred: fn(char) -> bool) {
        while self.peek().is_some_and(pred) {
            self.bump();
        }
    }

    fn text_from(&self, start: usize) -> &'s str {
        self.src.get(start..self.pos).unwrap_or("")
    }

    fn next_token(&mut self) -> Result<Token<'s>, ExprError> {
        self.bump_while(char::is_whitespace);
        let start = self.pos;
        let col = self.col;
        let Some(c) = self.bump() else {
            return Ok(Token {
                kind: Kind::End,
                col,
                text: "",
                start,
                end: start,
            });
        };
        let kind = match c {
            '(' => Kind::LParen,
            ')' => Kind::RParen,
            '[' => Kind::LBracket,
            ']' => Kind::RBracket,
            ',' => Kind::Comma,
            '!' => {
                if self.bump_if('=') {
                    self.bump_if('=');
                    Kind::Ne
                } else {
                    Kind::Not
                }
            }
            '=' if self.bump_if('=') => {
                self.bump_if('=');
                Kind::Eq
            }
            '&' if self.bump_if('&') => Kind::And,
            '|' if self.bump_if('|') => Kind::Or,
            '=' | '&' | '|' => {
                return Err(ExprError::new(
                    col,
                    format!("unexpected \"{c}\", expected \"{c}{c}\""),
                ));
            }
            '"' | '\'' => self.string(c, col)?,
            c if is_word_start(c) => self.word(start, col)?,
            c => return Err(ExprError::new(col, format!("unexpected \"{c}\""))),
        };
        Ok(Token {
            kind,
            col,
            text: self.text_from(start),
            start,
            end: self.pos,
        })
    }

    /// The rest of a string literal whose opening `quote` was at column `col`.
    fn string(&mut self, quote: char, col: usize) -> Result<Kind, ExprError> {
        let mut value = String::new();
        loop {
            let here = self.col;
            match self.bump() {
                None => return Err(ExprError::new(col, "unterminated string")),
                Some(c) if c == quote => return Ok(Kind::Str(value)),
                Some('\\') => match self.bump() {
                    None => return Err(ExprError::new(col, "unterminated string")),
                    Some(e @ ('\\' | '"' | '\'')) => value.push(e),
                    Some(e) => {
                        return Err(ExprError::new(
                            here,
                            format!("unsupported escape \"\\{e}\" in string"),
                        ));
                    }
                },
                Some(c) => value.push(c),
            }
        }
    }

    /// A keyword or identifier whose first character (at byte `start`, column `col`) has been
    /// consumed.
    fn word(&mut self, start: usize, col: usize) -> Result<Kind, ExprError> {
        self.bump_while(is_word_char);
        let set = match self.text_from(start) {
            "true" => return Ok(Kind::True),
            "false" => return Ok(Kind::False),
            "clientType" => return Ok(Kind::ClientType),
            "isBackoffice" => return Ok(Kind::IsBackoffice),
            "in" => return Ok(Kind::In),
            "groups" => Set::Groups,
            "permissions" => Set::Permissions,
            "roles" => Set::Roles,
            _ => {
                // Name the whole dotted path (`user.id`, not just `user`) in the message.
                while self.peek() == Some('.') {
                    self.bump();
                    self.bump_while(is_name_char);
                }
                return Err(ExprError::new(
                    col,
                    format!("unknown identifier \"{}\"", self.text_from(start)),
                ));
            }
        };
        if !self.bump_if('.') {
            return Ok(Kind::Set(set));
        }
        let name_start = self.pos;
        loop {
            let segment = self.pos;
            self.bump_while(is_name_char);
            if self.pos == segment {
                return Err(ExprError::new(
                    self.col,
                    format!("expected identifier after \"{}\"", self.text_from(start)),
                ));
            }
            if !self.bump_if('.') {
                break;
            }
        }
        Ok(Kind::Name(set, self.text_from(name_start).to_owned()))
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

struct Parser<'s> {
    lexer: Lexer<'s>,
    peeked: Option<Token<'s>>,
    /// Current nesting of parentheses and `!`, bounded by `MAX_DEPTH`.
    depth: usize,
    /// Byte range in the source of every node built, in the order they were completed (a
    /// post-order of the tree): what [`Expression::explain`] names each sub-expression by.
    spans: Vec<(usize, usize)>,
    /// Where the last token read ends.
    last_end: usize,
}

impl<'s> Parser<'s> {
    fn new(src: &'s str) -> Self {
        Self {
            lexer: Lexer::new(src),
            peeked: None,
            depth: 0,
            spans: Vec::new(),
            last_end: 0,
        }
    }

    /// Records that `node`, whose first token started at byte `start`, ends with the last token
    /// read.
    fn made(&mut self, start: usize, node: Node) -> Node {
        self.spans.push((start, self.last_end));
        node
    }

    /// A chain of `&&` or `||`; a one-element chain is just its element (no node of its own).
    fn chain(
        &mut self,
        start: usize,
        mut items: Vec<Node>,
        chain: fn(Box<[Node]>) -> Node,
    ) -> Node {
        if items.len() == 1
            && let Some(only) = items.pop()
        {
            return only;
        }
        self.made(start, chain(items.into_boxed_slice()))
    }

    // Tokens are read on demand, so the first error in reading order is the one reported.
    fn peek(&mut self) -> Result<&Token<'s>, ExprError> {
        let tok = match self.peeked.take() {
            Some(tok) => tok,
            None => self.lexer.next_token()?,
        };
        Ok(self.peeked.insert(tok))
    }

    fn next(&mut self) -> Result<Token<'s>, ExprError> {
        let tok = match self.peeked.take() {
            Some(tok) => tok,
            None => self.lexer.next_token()?,
        };
        self.last_end = tok.end;
        Ok(tok)
    }

    fn peek_is(&mut self, kind: &Kind) -> Result<bool, ExprError> {
        Ok(&self.peek()?.kind == kind)
    }

    fn check_depth(&self, extra: usize, col: usize) -> Result<(), ExprError> {
        if self.depth + extra > MAX_DEPTH {
            return Err(ExprError::new(
                col,
                format!("expression nests deeper than {MAX_DEPTH} levels"),
            ));
        }
        Ok(())
    }

    fn parse_or(&mut self) -> Result<Node, ExprError> {
        let start = self.peek()?.start;
        let mut items = vec![self.parse_and()?];
        while self.peek_is(&Kind::Or)? {
            self.next()?;
            items.push(self.parse_and()?);
        }
        Ok(self.chain(start, items, Node::Any))
    }

    fn parse_and(&mut self) -> Result<Node, ExprError> {
        let start = self.peek()?.start;
        let mut items = vec![self.parse_equality()?];
        while self.peek_is(&Kind::And)? {
            self.next()?;
            items.push(self.parse_equality()?);
        }
        Ok(self.chain(start, items, Node::All))
    }

    fn parse_equality(&mut self) -> Result<Node, ExprError> {
        let start = self.peek()?.start;
        let mut left = self.parse_membership()?;
        let mut chained = 0;
        loop {
            let tok = self.peek()?;
            let col = tok.col;
            let negated = match tok.kind {
                Kind::Eq => false,
                Kind::Ne => true,
                _ => return Ok(left),
            };
            // Equality is left-associative, so each link of a chain deepens the tree.
            chained += 1;
            self.check_depth(chained, col)?;
            self.next()?;
            let right = self.parse_membership()?;
            left = self.made(
                start,
                Node::Equal {
                    left: Box::new(left),
                    right: Box::new(right),
                    negated,
                },
            );
        }
    }

    // `in` binds tighter than equality, as JavaScript's relational operators do.
    fn parse_membership(&mut self) -> Result<Node, ExprError> {
        let (col, start) = {
            let tok = self.peek()?;
            (tok.col, tok.start)
        };
        if self.peek_is(&Kind::LBracket)? {
            let names = self.parse_list()?;
            let tok = self.next()?;
            if tok.kind != Kind::In {
                return Err(ExprError::new(tok.col, "expected \"in\" after list"));
            }
            let set = self.parse_set()?;
            return Ok(self.made(start, Node::Member { set, names }));
        }
        let left = self.parse_unary()?;
        if !self.peek_is(&Kind::In)? {
            return Ok(left);
        }
        let Node::Str(name) = left else {
            return Err(ExprError::new(
                col,
                "left side of \"in\" must be a string or a list of strings",
            ));
        };
        self.next()?;
        let set = self.parse_set()?;
        // The string was recorded as a node of its own; it is now part of this one.
        self.spans.pop();
        Ok(self.made(
            start,
            Node::Member {
                set,
                names: Box::new([name]),
            },
        ))
    }

    /// The right side of `in`.
    fn parse_set(&mut self) -> Result<Set, ExprError> {
        let tok = self.next()?;
        match tok.kind {
            Kind::Set(set) => Ok(set),
            _ => Err(ExprError::new(
                tok.col,
                "expected \"groups\" or \"permissions\" after \"in\"",
            )),
        }
    }

    /// `["a", "b"]`, the left side of `in`.
    fn parse_list(&mut self) -> Result<Box<[Box<str>]>, ExprError> {
        self.next()?; // the `[`
        let mut names = Vec::new();
        if self.peek_is(&Kind::RBracket)? {
            self.next()?;
            return Ok(names.into_boxed_slice());
        }
        loop {
            let tok = self.next()?;
            let Kind::Str(name) = tok.kind else {
                return Err(ExprError::new(tok.col, "expected string in list"));
            };
            names.push(name.into_boxed_str());
            let tok = self.next()?;
            match tok.kind {
                Kind::Comma => {}
                Kind::RBracket => return Ok(names.into_boxed_slice()),
                _ => return Err(ExprError::new(tok.col, "expected \",\" or \"]\" in list")),
            }
        }
    }

    fn parse_unary(&mut self) -> Result<Node, ExprError> {
        let tok = self.peek()?;
        if tok.kind != Kind::Not {
            return self.parse_primary();
        }
        let (col, start) = (tok.col, tok.start);
        self.check_depth(1, col)?;
        self.next()?;
        self.depth += 1;
        let inner = self.parse_unary();
        self.depth -= 1;
        Ok(self.made(start, Node::Not(Box::new(inner?))))
    }

    fn parse_primary(&mut self) -> Result<Node, ExprError> {
        let tok = self.next()?;
        let start = tok.start;
        let leaf = match tok.kind {
            Kind::True => Node::Bool(true),
            Kind::False => Node::Bool(false),
            Kind::Str(s) => Node::Str(s.into_boxed_str()),
            Kind::ClientType => Node::ClientType,
            Kind::IsBackoffice => Node::IsBackoffice,
            Kind::Name(set, name) => Node::Member {
                set,
                names: Box::new([name.into_boxed_str()]),
            },
            Kind::Set(set) => self.parse_bracket_name(set, tok.col)?,
            _ => return self.parse_group(tok),
        };
        Ok(self.made(start, leaf))
    }

    /// A parenthesised expression (its node spans the inside, not the parentheses), or an
    /// error for any other token where a primary was expected.
    fn parse_group(&mut self, tok: Token<'s>) -> Result<Node, ExprError> {
        match tok.kind {
            Kind::LParen => {
                self.check_depth(1, tok.col)?;
                self.depth += 1;
                let inner = self.parse_or();
                self.depth -= 1;
                let inner = inner?;
                let close = self.next()?;
                if close.kind != Kind::RParen {
                    return Err(ExprError::new(close.col, "expected \")\""));
                }
                Ok(inner)
            }
            Kind::LBracket => Err(ExprError::new(
                tok.col,
                "a list is only valid on the left of \"in\"",
            )),
            _ => Err(unexpected(&tok)),
        }
    }

    /// `groups["NAME"]`, after `groups` (at column `col`) has been read.
    fn parse_bracket_name(&mut self, set: Set, col: usize) -> Result<Node, ExprError> {
        let name = set.as_str();
        if !self.peek_is(&Kind::LBracket)? {
            return Err(ExprError::new(
                col,
                format!("\"{name}\" needs a name (\"{name}.NAME\") or must follow \"in\""),
            ));
        }
        self.next()?;
        let tok = self.next()?;
        let Kind::Str(value) = tok.kind else {
            return Err(ExprError::new(
                tok.col,
                format!("expected string after \"{name}[\""),
            ));
        };
        let close = self.next()?;
        if close.kind != Kind::RBracket {
            return Err(ExprError::new(close.col, "expected \"]\""));
        }
        Ok(Node::Member {
            set,
            names: Box::new([value.into_boxed_str()]),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Cases {
        evaluate: Vec<EvalCase>,
        errors: Vec<ErrorCase>,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    struct EvalCase {
        expr: String,
        #[serde(default)]
        groups: Vec<String>,
        #[serde(default)]
        permissions: Vec<String>,
        #[serde(default)]
        roles: Vec<String>,
        #[serde(default)]
        client_type: String,
        #[serde(default)]
        is_backoffice: bool,
        expect: bool,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct ErrorCase {
        expr: String,
        column: usize,
        contains: String,
    }

    #[test]
    fn check_case() {
        let cases: Cases =
            serde_json::from_str(include_str!("../../tests/cases/expressions.json")).unwrap();
        let mut failures = Vec::new();

        for (i, case) in cases.evaluate.iter().enumerate() {
            let facts = Facts {
                groups: &case.groups,
                permissions: &case.permissions,
                roles: &case.roles,
                client_type: &case.client_type,
                is_backoffice: case.is_backoffice,
            };
            match Expression::compile(&case.expr) {
                Ok(expr) => {
                    let got = expr.evaluate(&facts);
                    if got != case.expect {
                        failures.push(format!(
                            "evaluate[{i}] {:?}: expected {}, got {got}",
                            case.expr, case.expect
                        ));
                    }
                    if expr.source() != case.expr {
                        failures.push(format!("evaluate[{i}] {:?}: source() differs", case.expr));
                    }
                }
                Err(err) => failures.push(format!("evaluate[{i}] {:?}: {err}", case.expr)),
            }
        }

        for (i, case) in cases.errors.iter().enumerate() {
            match Expression::compile(&case.expr) {
                Ok(expr) => failures.push(format!(
                    "errors[{i}] {:?}: compiled, expected an error ({expr:?})",
                    case.expr
                )),
                Err(err) => {
                    if err.column != case.column || !err.message.contains(&case.contains) {
                        failures.push(format!(
                            "errors[{i}] {:?}: expected column {} containing {:?}, got {err}",
                            case.expr, case.column, case.contains
                        ));
                    }
                }
            }
        }

        assert!(
            failures.is_empty(),
            "failed cases:\n{}",
            failures.join("\n")
        );
    }

    /// Every case of the table, explained: the root's value is `evaluate`'s, and each step's
    /// text is a sub-expression that compiles on its own to the same value.
    #[test]
    fn explain_names_every_sub_expression_with_its_value() {
        let cases: Cases =
            serde_json::from_str(include_str!("../../tests/cases/expressions.json")).unwrap();
        for case in &cases.evaluate {
            let facts = Facts {
                groups: &case.groups,
                permissions: &case.permissions,
                roles: &case.roles,
                client_type: &case.client_type,
                is_backoffice: case.is_backoffice,
            };
            let expr = Expression::compile(&case.expr).unwrap();
            let steps = expr.explain(&facts);
            assert_eq!(steps[0].depth, 0, "{}", case.expr);
            let truthy = match &steps[0].value {
                StepValue::Bool(b) => *b,
                StepValue::Str(s) => !s.is_empty(),
            };
            assert_eq!(truthy, case.expect, "{}", case.expr);
            for step in &steps {
                let part = Expression::compile(&step.text)
                    .unwrap_or_else(|e| panic!("{:?} of {:?}: {e}", step.text, case.expr));
                assert_eq!(
                    part.explain(&facts)[0].value,
                    step.value,
                    "{:?} of {:?}",
                    step.text,
                    case.expr
                );
            }
        }
    }

    #[test]
    fn explain_lists_the_parts_in_order() {
        let expr = Expression::compile(
            "groups.admin && (isBackoffice || clientType == 'cms') && !permissions.x",
        )
        .unwrap();
        let permissions = ["x".to_owned()];
        let facts = Facts {
            client_type: "cms",
            permissions: &permissions,
            ..Facts::default()
        };
        let steps = expr.explain(&facts);
        let texts: Vec<(usize, &str, String)> = steps
            .iter()
            .map(|s| (s.depth, s.text.as_str(), s.value.to_string()))
            .collect();
        assert_eq!(
            texts,
            [
                (
                    0,
                    "groups.admin && (isBackoffice || clientType == 'cms') && !permissions.x",
                    "false".to_owned()
                ),
                (1, "groups.admin", "false".to_owned()),
                (1, "isBackoffice || clientType == 'cms'", "true".to_owned()),
                (2, "isBackoffice", "false".to_owned()),
                (2, "clientType == 'cms'", "true".to_owned()),
                (3, "clientType", "\"cms\"".to_owned()),
                (3, "'cms'", "\"cms\"".to_owned()),
                (1, "!permissions.x", "false".to_owned()),
                (2, "permissions.x", "true".to_owned()),
            ]
        );
        assert_eq!(steps[8].permissions_held, ["x"]);
    }

    #[test]
    fn hostile_long_input_is_an_error() {
        let input = "(".repeat(10_000);
        let err = Expression::compile(&input).unwrap_err();
        assert_eq!(err.column, MAX_LEN + 1);
        assert!(err.message.contains("longer than"), "{err}");

        let input = "groups.a || ".repeat(1000);
        assert!(Expression::compile(&input).is_err());
    }

    #[test]
    fn deep_nesting_is_an_error() {
        let input = format!("{}true{}", "(".repeat(1000), ")".repeat(1000));
        let err = Expression::compile(&input).unwrap_err();
        assert_eq!(err.column, MAX_DEPTH + 1);
        assert!(err.message.contains("deeper"), "{err}");

        let input = format!("{}true", "!".repeat(1000));
        assert!(Expression::compile(&input).is_err());

        let input = format!("true{}", " == true".repeat(100));
        assert!(Expression::compile(&input).is_err());
    }

    #[test]
    fn nesting_up_to_the_limit_compiles() {
        let input = format!("{}true{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
        let expr = Expression::compile(&input).unwrap();
        assert!(expr.evaluate(&Facts::default()));

        let input = format!("{}true", "!".repeat(MAX_DEPTH));
        let expr = Expression::compile(&input).unwrap();
        assert!(expr.evaluate(&Facts::default()));
    }

    #[test]
    fn long_flat_chain_compiles() {
        // Close to the length limit: flat chains must not count against the depth limit.
        let input = vec!["groups.a"; 300].join(" || ");
        let expr = Expression::compile(&input).unwrap();
        let groups = ["a".to_owned()];
        let facts = Facts {
            groups: &groups,
            ..Facts::default()
        };
        assert!(expr.evaluate(&facts));
        assert!(!expr.evaluate(&Facts::default()));
    }

    #[test]
    fn source_is_the_original_text() {
        let text = "  groups[\"a b\"] &&\tclientType === 'web'  ";
        let expr = Expression::compile(text).unwrap();
        assert_eq!(expr.source(), text);
    }

    #[test]
    fn error_display_names_column_and_message() {
        let err = Expression::compile("groups.admin && foo").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid expression at column 17: unknown identifier \"foo\""
        );
    }
}
