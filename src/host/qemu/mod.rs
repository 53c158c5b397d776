pub mod argv;
pub mod hotplug;
