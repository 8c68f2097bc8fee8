//! faultline's gRPC surface: the `faultline.v1` messages and services generated from
//! `proto/faultline/v1/*.proto`, and the descriptor set that server reflection serves.
//! Nothing else lives here: the agent converts these types to its domain types at its edge.

#![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]

pub mod v1 {
    tonic::include_proto!("faultline.v1");
}

/// Encoded `FileDescriptorSet` of every faultline proto, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("faultline_descriptor");
