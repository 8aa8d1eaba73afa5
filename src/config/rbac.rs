//! Where the RBAC roles and bindings are (issue 13): the native file's `rbac` section (inline,
//! `file`, or Rönd's exported collections) and `CHECKPOINT_RBAC_FILE`. The documents' shapes
//! are declared here, so that the JSON Schema describes them; `crate::rbac` compiles and
//! validates them with their positions.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Deserialize;

/// Roles and bindings: inline (`roles`, `bindings`), in a file of the same structure (`file`),
/// or Rönd's collections as `mongoexport --jsonArray` writes them (`rond`); one of the three.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RbacSection {
    /// Roles defined once: an id, permissions, and the roles whose permissions they include.
    pub roles: Option<Vec<RoleDoc>>,
    /// Who holds which roles and permissions, optionally on one resource only.
    pub bindings: Option<Vec<BindingDoc>>,
    /// A YAML or JSON file with `roles` and `bindings`, relative to this configuration file.
    pub file: Option<String>,
    /// Rönd's `roles` and `bindings` collections, exported with `mongoexport --jsonArray`.
    pub rond: Option<RondSection>,
    /// When set, allowed requests carry the caller's effective roles on the request upstream in
    /// this header (comma-separated). Off by default.
    pub roles_header: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RondSection {
    /// The exported `roles` collection, relative to this configuration file.
    pub roles: String,
    /// The exported `bindings` collection, relative to this configuration file.
    pub bindings: String,
}

/// The structure of `rbac` inline and of an `rbac.file`.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RbacDoc {
    #[serde(default)]
    pub roles: Vec<RoleDoc>,
    #[serde(default)]
    pub bindings: Vec<BindingDoc>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RoleDoc {
    pub id: String,
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Roles whose permissions this role includes.
    #[serde(default)]
    pub inherits: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BindingDoc {
    pub id: String,
    /// User ids.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Groups of the user, as the identity provider reports them.
    #[serde(default)]
    pub groups: Vec<String>,
    /// Client types, as a verified API key identifies them (never the client-type header).
    #[serde(default)]
    pub clients: Vec<String>,
    /// mTLS principals, as Envoy reports them (`source.principal`).
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub permissions: Vec<String>,
    /// The binding applies only to rules that name this resource.
    pub resource: Option<ResourceDoc>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ResourceDoc {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: String,
}

/// Where the roles and bindings come from, validated enough to be read.
#[derive(Debug, Clone, PartialEq)]
pub enum RbacSource {
    /// The native file's `rbac.roles` and `rbac.bindings`; `text` is the file as read (after
    /// `${VAR}` expansion), for positions, and `shifts` maps them back to the file as written.
    Inline {
        label: String,
        text: String,
        shifts: super::expand::Shifts,
        doc: RbacDoc,
    },
    File(PathBuf),
    Rond {
        roles: PathBuf,
        bindings: PathBuf,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct RbacSettings {
    pub source: RbacSource,
    /// The upstream header with the caller's effective roles, lower-case; `None`: not sent.
    pub roles_header: Option<String>,
}

/// `CHECKPOINT_RBAC_FILE`: the roles and bindings for a configuration by Mia's variables.
pub const CHECKPOINT_RBAC_FILE: &str = "CHECKPOINT_RBAC_FILE";

/// `CHECKPOINT_RBAC_ROLES_HEADER`: the upstream header with the caller's effective roles
/// (`rbac.roles_header` in the native file); needs `CHECKPOINT_RBAC_FILE`.
pub const CHECKPOINT_RBAC_ROLES_HEADER: &str = "CHECKPOINT_RBAC_ROLES_HEADER";

/// Not sent unless configured.
pub const DEFAULT_CHECKPOINT_RBAC_ROLES_HEADER: Option<&str> = None;

/// The section of the native file, checked: exactly one source. `dir` is where relative paths
/// start. The roles header's name is checked by `config::cross_check`, as the variable's is.
pub fn from_section(
    section: &RbacSection,
    label: &str,
    dir: &std::path::Path,
) -> Result<RbacSettings, Vec<String>> {
    let mut problems = Vec::new();
    let inline = section.roles.is_some() || section.bindings.is_some();
    let source = match (inline, &section.file, &section.rond) {
        (true, None, None) => Some(RbacSource::Inline {
            label: label.to_owned(),
            text: String::new(),
            shifts: super::expand::Shifts::default(),
            doc: RbacDoc {
                roles: section.roles.clone().unwrap_or_default(),
                bindings: section.bindings.clone().unwrap_or_default(),
            },
        }),
        (false, Some(file), None) => Some(RbacSource::File(dir.join(file))),
        (false, None, Some(rond)) => Some(RbacSource::Rond {
            roles: dir.join(&rond.roles),
            bindings: dir.join(&rond.bindings),
        }),
        _ => {
            problems.push(format!(
                "{label}: rbac: give exactly one of `roles`/`bindings` (inline), `file` and `rond`"
            ));
            None
        }
    };
    // Its name is checked with the other headers by `config::cross_check`.
    let roles_header = section
        .roles_header
        .as_ref()
        .map(|h| h.to_ascii_lowercase());
    match source {
        Some(source) if problems.is_empty() => Ok(RbacSettings {
            source,
            roles_header,
        }),
        _ => Err(problems),
    }
}
