//! The response side of a request, below both the phase driver and the `ngx`
//! API: sending the head (`head`, which runs the header filter), the body type
//! handed to hyper (`body`), nginx's special pages (`special`) and HTTP dates
//! (`date`). Nothing here imports `phase` or `lua::api`.

pub mod body;
pub mod date;
pub mod head;
pub mod special;
