//! Proxying, as nginx's `proxy_pass` and `upstream {}`: where a location's
//! requests go (`endpoints`, the Service endpoints the controller sends), and
//! the machinery that carries them there.

pub mod endpoints;
