//! Converts the services of a docker-compose file into fleet/v1 deployment manifests
//! (`fleetctl import`). One pure entry point, [`convert`]: compose text in, per service a
//! manifest or the reason there is none, and a [`Finding`] for every compose key that was
//! not carried (or carried with a difference worth knowing). Nothing is dropped without a
//! finding naming its path, e.g. `services.web.deploy.replicas`.
//!
//! Every manifest produced is decoded again by [`Deployment::from_toml_str`], the agent's
//! own decoder, before it is returned: what `convert` hands out is what the agent accepts.

mod service;
mod values;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use fleet_contract::Deployment;

pub use yaml::{Mark, MAX_DEPTH, MAX_NODES};

/// Largest compose file accepted, in bytes.
pub const MAX_COMPOSE_BYTES: usize = 1024 * 1024;

/// What a compose file converted into.
#[derive(Debug)]
pub struct Import {
    /// Findings about the file outside any service (top-level keys).
    pub findings: Vec<Finding>,
    /// Every service, in file order.
    pub services: Vec<Service>,
}

/// One compose service and what became of it.
#[derive(Debug)]
pub struct Service {
    /// The service's key under `services`.
    pub name: String,
    /// Where the service is in the file.
    pub mark: Mark,
    /// What was not carried, or carried with a difference.
    pub findings: Vec<Finding>,
    /// The manifest, or why there is none.
    pub result: Result<Converted, ServiceError>,
}

/// A converted service.
#[derive(Debug, Clone, PartialEq)]
pub struct Converted {
    /// The manifest, as the agent decodes [`Converted::toml`].
    pub deployment: Deployment,
    /// The manifest text (TOML, with a header comment naming its source and its findings).
    pub toml: String,
}

/// Why a service has no manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceError {
    /// The compose path at fault (`services.web.ports[1]`), or for a manifest the contract
    /// refused, the manifest's field (`container.env.my.var`).
    pub path: String,
    /// Where in the compose file, when known.
    pub mark: Option<Mark>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ServiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(m) = self.mark {
            write!(f, "line {}, column {}: ", m.line, m.column)?;
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// How much a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    /// Carried, with a difference in behaviour worth knowing.
    Note,
    /// Not carried: the key is left out of the manifest.
    Unsupported,
}

/// A compose key that was not carried, or carried with a note.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Compose path, e.g. `services.web.deploy.replicas` or `services.web.ports[2]`.
    pub path: String,
    /// Where the key is in the file.
    pub mark: Mark,
    /// Not carried, or a note.
    pub severity: Severity,
    /// Why, and what to do instead.
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.severity {
            Severity::Note => "note",
            Severity::Unsupported => "not carried",
        };
        write!(
            f,
            "line {}, column {}: {}: {what}: {}",
            self.mark.line, self.mark.column, self.path, self.message
        )
    }
}

/// Why the whole file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// Larger than [`MAX_COMPOSE_BYTES`].
    #[error("{0} bytes; the limit is {MAX_COMPOSE_BYTES}")]
    TooLarge(usize),
    /// Not YAML, or YAML this reader refuses (see [`MAX_DEPTH`], [`MAX_NODES`]).
    #[error("line {}, column {}: {message}", mark.line, mark.column)]
    Yaml {
        /// Where.
        mark: Mark,
        /// What is wrong.
        message: String,
    },
    /// YAML, but not the shape of a compose file.
    #[error("line {}, column {}: {path}: {message}", mark.line, mark.column)]
    Shape {
        /// The compose path at fault.
        path: String,
        /// Where.
        mark: Mark,
        /// What is wrong.
        message: String,
    },
}

impl Import {
    /// Every finding, the file's first, then each service's.
    pub fn all_findings(&self) -> impl Iterator<Item = &Finding> {
        self.findings
            .iter()
            .chain(self.services.iter().flat_map(|s| s.findings.iter()))
    }
}

/// Converts the compose file `src`; `source` names it in the manifests' header comment.
pub fn convert(src: &str, source: &str) -> Result<Import, ImportError> {
    if src.len() > MAX_COMPOSE_BYTES {
        return Err(ImportError::TooLarge(src.len()));
    }
    let root = yaml::parse(src)
        .map_err(|e| ImportError::Yaml {
            mark: e.mark,
            message: e.message,
        })?
        .ok_or_else(|| ImportError::Shape {
            path: "(document)".into(),
            mark: Mark { line: 1, column: 1 },
            message: "the file is empty; a compose file has a `services` mapping".into(),
        })?;
    let shape = |path: &str, mark: Mark, message: String| ImportError::Shape {
        path: path.to_owned(),
        mark,
        message,
    };
    let top = root.as_map().ok_or_else(|| {
        shape(
            "(document)",
            root.mark,
            format!(
                "is {}; a compose file is a mapping with `services`",
                root.describe()
            ),
        )
    })?;
    let mut findings = Vec::new();
    let mut services_node = None;
    let mut volumes_node = None;
    for (k, v) in top {
        match k.text.as_str() {
            "services" => services_node = Some((k, v)),
            "volumes" => volumes_node = Some((k, v)),
            // Obsolete: docker compose ignores it (and warns); it changes nothing.
            "version" => {}
            x if x.starts_with("x-") => {}
            "name" => findings.push(unsupported(
                "name",
                k.mark,
                "the project name is not carried: each deployment is named after its service",
            )),
            "networks" => findings.push(unsupported(
                "networks",
                k.mark,
                "networks are not carried: a deployment uses podman's default bridge network \
                 (no name resolution between deployments), `host` or `none` (network_mode)",
            )),
            "configs" | "secrets" => findings.push(unsupported(
                &k.text,
                k.mark,
                "not carried: put the files on the device and bind-mount them (volumes with an \
                 absolute host path)",
            )),
            "include" => findings.push(unsupported(
                "include",
                k.mark,
                "included files are not read; import each file by itself",
            )),
            other => findings.push(unsupported(
                &yaml::shorten(other),
                k.mark,
                "is not a top-level Compose key",
            )),
        }
    }
    let Some((skey, snode)) = services_node else {
        return Err(shape(
            "services",
            root.mark,
            "the file has no `services` mapping".into(),
        ));
    };
    let Some(svcs) = snode.as_map() else {
        return Err(shape(
            "services",
            skey.mark,
            format!("is {}; it is a mapping of service names", snode.describe()),
        ));
    };
    if let Some((vk, vnode)) = volumes_node {
        service::top_level_volumes(vk, vnode, &mut findings);
    }
    // Named volumes used by more than one service: each deployment gets its own.
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in svcs {
        for vol in service::named_volumes(v) {
            users.entry(vol).or_default().push(k.text.clone());
        }
    }
    let mut services = Vec::new();
    for (k, v) in svcs {
        let mut found = Vec::new();
        let converted = service::convert_service(&k.text, k.mark, v, &users, &mut found);
        // In file order (a merged `<<` key is where its anchor is).
        found.sort_by_key(|f| (f.mark.line, f.mark.column));
        let result = converted.and_then(|d| emit(d, source, &k.text, &found));
        services.push(Service {
            name: k.text.clone(),
            mark: k.mark,
            findings: found,
            result,
        });
    }
    Ok(Import { findings, services })
}

fn unsupported(path: &str, mark: Mark, message: &str) -> Finding {
    Finding {
        path: path.to_owned(),
        mark,
        severity: Severity::Unsupported,
        message: message.to_owned(),
    }
}

/// The manifest text, decoded again by the agent's decoder: refused there means no manifest.
fn emit(
    d: Deployment,
    source: &str,
    service: &str,
    findings: &[Finding],
) -> Result<Converted, ServiceError> {
    let here = format!("services.{}", yaml::shorten(service));
    let body = toml::to_string(&d).map_err(|e| ServiceError {
        path: here.clone(),
        mark: None,
        message: format!("cannot encode the manifest: {e}"),
    })?;
    let mut text = format!(
        "# Converted by `fleetctl import` from {}, service \"{}\".\n",
        comment_safe(source),
        comment_safe(service)
    );
    let dropped: Vec<&Finding> = findings
        .iter()
        .filter(|f| f.severity == Severity::Unsupported)
        .collect();
    if !dropped.is_empty() {
        text.push_str("# Not carried:\n");
        for f in dropped {
            text.push_str(&format!("#   {}\n", comment_safe(&f.path)));
        }
    }
    text.push('\n');
    text.push_str(&body);
    let back = Deployment::from_toml_str(&text).map_err(|e| ServiceError {
        path: e.field.clone().unwrap_or_else(|| here.clone()),
        mark: None,
        message: format!("the agent refuses the manifest: {}", e.message),
    })?;
    if back != d {
        return Err(ServiceError {
            path: here,
            mark: None,
            message: "the manifest does not decode to what was converted".into(),
        });
    }
    Ok(Converted {
        deployment: back,
        toml: text,
    })
}

/// One line of printable text for a TOML comment.
fn comment_safe(s: &str) -> String {
    yaml::shorten(s)
}
