//! Where a session travels: finding it in a request, removing it before the backend sees it,
//! and writing it into a response.

pub(crate) mod cookie;
pub(crate) mod header;
pub(crate) mod set_cookie;
pub(crate) mod url;
