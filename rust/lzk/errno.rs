// SPDX-License-Identifier: GPL-2.0
//! Error codes the kernel crate's `error::code` does not declare (yet).
#![allow(non_snake_case)]

use kernel::bindings;
use kernel::error::Error;

macro_rules! errnos {
    ($($name:ident),* $(,)?) => {
        $(
            #[doc = concat!("`-", stringify!($name), "`.")]
            #[inline]
            pub fn $name() -> Error {
                Error::from_errno(-(bindings::$name as i32))
            }
        )*
    };
}

errnos!(EOPNOTSUPP, EMSGSIZE, ECONNRESET, EPROTO, ETIMEDOUT, ECANCELED, EINPROGRESS, EALREADY, ENOTCONN, ECONNREFUSED);
