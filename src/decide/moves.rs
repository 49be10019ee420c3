//! Moving nodes from one thing to another (a plugin revision, a GPU provider): the guarded node
//! label writes that do it, and the `maxUnavailable` budget that paces it.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// A label write on one node, applied only while the label still has its `from` value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LabelChange {
    pub node: String,
    pub from: Option<String>,
    pub to: Option<String>,
}

/// `maxUnavailable` for a pool of `nodes` nodes: at least one.
pub fn max_unavailable(value: &IntOrString, nodes: usize) -> usize {
    match value {
        IntOrString::Int(n) => usize::try_from(*n).unwrap_or(1).max(1),
        IntOrString::String(s) => {
            let percent: usize = s.trim_end_matches('%').parse().unwrap_or(0);
            (nodes * percent / 100).max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unavailable_is_a_count_or_a_share_and_at_least_one() {
        assert_eq!(max_unavailable(&IntOrString::Int(3), 10), 3);
        assert_eq!(max_unavailable(&IntOrString::Int(0), 10), 1);
        assert_eq!(max_unavailable(&IntOrString::String("25%".into()), 10), 2);
        assert_eq!(max_unavailable(&IntOrString::String("10%".into()), 5), 1);
        assert_eq!(max_unavailable(&IntOrString::String("100%".into()), 7), 7);
    }
}
