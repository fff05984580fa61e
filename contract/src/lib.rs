//! The fleet-agent wire contract: every document that crosses a process boundary.
//!
//! Deployment manifests, status documents, device ids and the subject/key names the control
//! planes use. Pure data and validation, no I/O, so the agent, `fleetctl` and fuzz targets all
//! decode outside input through exactly this code.

#![warn(missing_docs)]

mod command;
mod device;
mod image;
mod manifest;
pub mod names;
pub mod release;
mod status;
mod strict;
mod system;
mod text;

pub use command::{
    decode_public_key, generate_key_pkcs8, key_pair_from_b64, public_key_b64, CommandDecodeError,
    CommandEnvelope, CommandReply, Role, SignedCommand, COMMAND_API_VERSION, MAX_COMMAND_BYTES,
    SIGNING_DOMAIN,
};
pub use device::{DeviceId, DeviceIdError};
pub use image::{ImageReference, MAX_IMAGE_NAME_BYTES, MAX_IMAGE_TAG_BYTES};
pub use manifest::{
    canonical_capability, decode_toml, located_error, BindMount, ContainerSpec, DecodeError,
    Deployment, DeviceMapping, ExecProbe, HttpProbe, InitContainer, Lifecycle, LogOptions,
    NetworkMode, PortMapping, Probe, ProbeCheck, Protocol, PullPolicy, Resources, RestartPolicy,
    TcpProbe, TmpfsMount, VolumeMount, API_VERSION, CAPABILITIES, MAX_LIST_ENTRIES,
    MAX_MANIFEST_BYTES, MAX_REVISION, MAX_SAFE_INTEGER,
};
pub use status::{DeploymentStatus, Phase, ProbeStatus};
pub use system::{
    validate_upgrade_id, SystemUpgrade, DEADLINE_RANGE, DEFAULT_UPGRADE_COMMAND, MAX_BOOTS_RANGE,
    MAX_SYSTEM_UPGRADE_BYTES,
};
pub use text::{
    argv_problem, cap_message, quote, MAX_ARG_BYTES, MAX_MESSAGE_BYTES, MAX_QUOTED_CHARS,
};
