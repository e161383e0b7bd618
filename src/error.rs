//! What every layer needs to report errors: the cause chain in one line.

/// An error and its causes, `: `-separated, for logs and messages.
#[must_use]
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_chain_lists_every_cause() {
        let inner = std::io::Error::other("disk full");
        let outer = anyhow::Error::new(inner).context("writing the snapshot");
        let chain = super::error_chain(outer.as_ref());
        assert_eq!(chain, "writing the snapshot: disk full");
    }
}
