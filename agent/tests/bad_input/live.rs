//! The live agent on each control plane.
