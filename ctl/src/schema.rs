//! `fleetctl schema`: the JSON schema (draft 2020-12) of a deployment manifest, for editors
//! and CI. The text is `contract/schema/deployment.schema.json`, generated with schemars
//! from `fleet_contract::Deployment` by fleetctl's test `schema` (`ctl/tests/schema.rs`),
//! which fails when the committed file is not what the types generate. fleetctl embeds
//! the file instead of linking schemars: the same bytes, a smaller binary, and no schemars
//! in any build of the agent.

use std::process::ExitCode;

/// The committed schema.
pub(crate) const DEPLOYMENT_SCHEMA: &str =
    include_str!("../../contract/schema/deployment.schema.json");

/// Prints the schema.
pub(crate) fn print() -> ExitCode {
    print!("{DEPLOYMENT_SCHEMA}");
    ExitCode::SUCCESS
}
