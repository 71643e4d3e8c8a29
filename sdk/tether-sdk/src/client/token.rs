//! [`TokenSource`]: where the client gets the bearer token it sends with
//! every call.

use tonic::Request;
use tonic::metadata::MetadataValue;

use crate::Error;

/// Gives the bearer token to send now. Called for every call, so keep it
/// cheap: cache the token and refresh it before it expires (or mint a
/// short-lived one). A watch that outlives a token reconnects and calls this
/// again.
pub trait TokenSource: Send + Sync + 'static {
    /// The token (without the `Bearer ` prefix), or why there is none.
    fn token(&self) -> Result<String, String>;
}

impl<F> TokenSource for F
where
    F: Fn() -> String + Send + Sync + 'static,
{
    fn token(&self) -> Result<String, String> {
        Ok(self())
    }
}

/// Puts `authorization: Bearer <token>` on `request`.
pub(crate) fn authorize<T>(source: &dyn TokenSource, request: &mut Request<T>) -> Result<(), Error> {
    let token = source.token().map_err(|e| Error::InvalidArgument(format!("no bearer token: {e}")))?;
    let value = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| Error::InvalidArgument("the bearer token is not valid header text".into()))?;
    request.metadata_mut().insert("authorization", value);
    Ok(())
}
