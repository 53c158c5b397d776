//! vman: a virtual-machine manager for Linux hosts with one GraphQL API.
//!
//! api → services (template, vm, disk, network) → host ports → host;
//! every change is journaled as an event and pushed to subscribers.

pub mod api;
pub mod app;
pub mod auth;
pub mod backup;
pub mod cluster;
pub mod coherence;
pub mod config;
pub mod console;
pub mod context;
pub mod db;
pub mod disk;
pub mod doctor;
pub mod error;
pub mod event_payload;
pub mod events;
pub mod health;
pub mod host;
pub mod image;
pub mod network;
pub mod observer;
pub mod operation;
pub mod playground;
pub mod server;
pub mod snapshot;
pub mod stats;
pub mod storage;
pub mod telemetry;
pub mod template;
pub mod tls;
pub mod validate;
pub mod vm;
