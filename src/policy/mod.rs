//! Policy: what a caller may do with a request, decided on one normalised view of its path.
//!
//! [`path`] turns the raw path into the segments ComfyUI will route on (and the exact path
//! forwarded, so both agree); [`routes`] puts the route in a class; [`origin`] refuses
//! cross-site requests that ride on a browser's session cookie; [`names`] resolves file names
//! inside ComfyUI's folders as ComfyUI does; [`content`] keeps user-supplied bytes inert.

pub mod content;
pub mod names;
pub mod origin;
pub mod path;
pub mod routes;

pub use names::NameError;
pub use path::{NormalizedPath, PathError, normalize};
pub use routes::{RouteClass, RouteError, RoutePolicy};
