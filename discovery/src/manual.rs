//! `manual`: no discovery; nodes join with `emqx-rs ctl cluster join`.

use crate::strategy::{DiscoveryError, Strategy};

#[derive(Debug, Default, Clone)]
pub struct Manual;

impl Strategy for Manual {
    fn name(&self) -> &'static str {
        "manual"
    }

    async fn discover(&mut self) -> Result<Vec<String>, DiscoveryError> {
        Ok(Vec::new())
    }

    fn autocluster(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_finds_nobody_and_never_autoclusters() {
        let mut m = Manual;
        assert_eq!(m.discover().await, Ok(vec![]));
        assert!(!m.autocluster());
    }
}
