//! Images: files imported into storage that templates build on. Import
//! arrives with the real QEMU port; here they can be listed and referenced.

pub mod graphql;
pub mod model;

pub use model::Model as Image;

use std::path::PathBuf;

use crate::app::App;

/// Where an image's file lives: named from its ID, never from user input.
pub fn path(app: &App, image: &Image) -> PathBuf {
    app.config.storage_dir().join("images").join(&image.id)
}
