//! The `anonymous` source: always answers "anonymous".
//!
//! Ends a source list explicitly, so that sources after it are never asked (a list whose every
//! source passes on ends anonymous anyway). Called by the [`Resolver`](super::Resolver).

use super::{BoxFuture, Context, Resolution, Source};
use crate::config::sources::AnonymousSource;
use crate::request::Request;

#[derive(Debug, Clone, Copy, Default)]
pub struct Anonymous;

impl Anonymous {
    /// Nothing to validate; the signature matches the other sources'.
    pub fn new(_settings: &AnonymousSource) -> Result<Anonymous, Vec<String>> {
        Ok(Anonymous)
    }
}

impl Source for Anonymous {
    fn name(&self) -> &'static str {
        "anonymous"
    }

    fn resolve<'a>(
        &'a self,
        _request: &'a Request,
        _context: &'a Context,
    ) -> BoxFuture<'a, Resolution> {
        Box::pin(std::future::ready(Resolution::Anonymous))
    }
}
