//! `static`: a fixed list of seed nodes (`cluster.static.seeds`).

use crate::strategy::{check_node_name, DiscoveryError, Strategy};

#[derive(Debug, Clone)]
pub struct Static {
    seeds: Vec<String>,
}

impl Static {
    /// Validates every seed's `name@host` shape up front, so a typo is a
    /// config error at start rather than a join that silently never happens.
    pub fn new(seeds: Vec<String>) -> Result<Static, DiscoveryError> {
        for s in &seeds {
            check_node_name(s)?;
        }
        let mut out: Vec<String> = Vec::with_capacity(seeds.len());
        for s in seeds {
            if !out.contains(&s) {
                out.push(s);
            }
        }
        Ok(Static { seeds: out })
    }
}

impl Strategy for Static {
    fn name(&self) -> &'static str {
        "static"
    }

    async fn discover(&mut self) -> Result<Vec<String>, DiscoveryError> {
        Ok(self.seeds.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn static_returns_its_seeds_once_each_in_order() {
        let mut s = Static::new(vec!["b@h".into(), "a@h".into(), "b@h".into()]).expect("valid");
        assert_eq!(
            s.discover().await,
            Ok(vec!["b@h".to_string(), "a@h".to_string()])
        );
        assert!(s.autocluster());
    }

    #[test]
    fn a_bad_seed_is_refused() {
        assert_eq!(
            Static::new(vec!["nohost".into()]).err(),
            Some(DiscoveryError::InvalidNodeName("nohost".into()))
        );
    }
}
