//! The client commands, one module per area, each a thin mapping of arguments onto the client library and
//! of answers onto the terminal.

use super::*;

pub(crate) mod access;
pub(crate) mod audit;
pub(crate) mod crypto;
pub(crate) mod fields;
pub(crate) mod keys;
pub(crate) mod operator;
