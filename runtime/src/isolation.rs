//! The isolation policy: which workloads run behind their own guest kernel (`vm`) and
//! which run in host namespaces (`container`).
//!
//! A workload may always ask for `vm` with the `io.husk.isolation` annotation. It may
//! ask for `container` only where the operator allows the annotation *and* gave no
//! `--isolation vm` flag: an operator who registered husk with `--isolation vm` for
//! untrusted workloads gets a VM whatever the workload's annotations say (the
//! conflict is an error, never a silent choice). Without an annotation: the
//! `--isolation` flag, then the operator config, then `vm`.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use crate::config::Config;

/// The annotation a workload uses to ask for an isolation.
pub const ISOLATION_ANNOTATION: &str = "io.husk.isolation";

/// How strongly a workload is isolated from the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Isolation {
    /// Its own microVM and guest kernel.
    Vm,
    /// Host namespaces and cgroups on the shared kernel, for trusted workloads.
    Container,
}

impl Isolation {
    pub fn as_str(self) -> &'static str {
        match self {
            Isolation::Vm => "vm",
            Isolation::Container => "container",
        }
    }
}

impl fmt::Display for Isolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the chosen isolation came from, so errors can say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IsolationSource {
    Annotation,
    Flag,
    OperatorConfig,
    BuiltinDefault,
}

impl fmt::Display for IsolationSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IsolationSource::Annotation => "the io.husk.isolation annotation",
            IsolationSource::Flag => "the --isolation flag",
            IsolationSource::OperatorConfig => "the operator config",
            IsolationSource::BuiltinDefault => {
                "the built-in default (no --isolation flag, no operator config)"
            }
        })
    }
}

/// Errors choosing an isolation.
#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    /// The annotation holds something other than `vm` or `container`.
    #[error(
        "annotation {ISOLATION_ANNOTATION}={value:?} is invalid: expected \"vm\" or \"container\""
    )]
    InvalidAnnotation { value: String },
    /// The workload asked for the shared kernel but the operator did not allow it to.
    #[error(
        "annotation {ISOLATION_ANNOTATION}=container is not allowed by the operator config \
         (set isolation.allow_annotation = true to let workloads choose the shared kernel)"
    )]
    AnnotationNotAllowed,
    /// The workload asked for the shared kernel where the operator's flag says `vm`.
    #[error(
        "annotation {ISOLATION_ANNOTATION}=container conflicts with --isolation vm: a runtime \
         registered for vm isolation never runs a workload on the shared kernel (drop the \
         annotation, or register a runtime without --isolation vm)"
    )]
    AnnotationOverridesFlag,
}

/// The isolation chosen for one workload and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IsolationDecision {
    pub isolation: Isolation,
    pub source: IsolationSource,
}

/// Resolves the isolation of a workload from the operator config, the command line and
/// the workload's annotations.
pub struct IsolationPolicy<'a> {
    pub config: &'a Config,
    pub flag: Option<Isolation>,
}

impl IsolationPolicy<'_> {
    pub fn decide(
        &self,
        annotations: Option<&HashMap<String, String>>,
    ) -> Result<IsolationDecision, IsolationError> {
        if let Some(value) = annotations.and_then(|a| a.get(ISOLATION_ANNOTATION)) {
            match value.as_str() {
                "vm" => {
                    return Ok(IsolationDecision {
                        isolation: Isolation::Vm,
                        source: IsolationSource::Annotation,
                    })
                }
                "container" if self.flag == Some(Isolation::Vm) => {
                    return Err(IsolationError::AnnotationOverridesFlag)
                }
                "container" if self.config.isolation.allow_annotation => {
                    return Ok(IsolationDecision {
                        isolation: Isolation::Container,
                        source: IsolationSource::Annotation,
                    })
                }
                "container" => return Err(IsolationError::AnnotationNotAllowed),
                other => {
                    return Err(IsolationError::InvalidAnnotation {
                        value: other.to_string(),
                    })
                }
            }
        }
        Ok(match self.flag {
            Some(isolation) => IsolationDecision {
                isolation,
                source: IsolationSource::Flag,
            },
            None => match self.config.isolation.default {
                Some(isolation) => IsolationDecision {
                    isolation,
                    source: IsolationSource::OperatorConfig,
                },
                None => IsolationDecision {
                    isolation: Isolation::Vm,
                    source: IsolationSource::BuiltinDefault,
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IsolationConfig;

    fn config(default: Isolation, allow_annotation: bool) -> Config {
        Config {
            isolation: IsolationConfig {
                default: Some(default),
                allow_annotation,
            },
            ..Default::default()
        }
    }

    fn annotated(value: &str) -> HashMap<String, String> {
        HashMap::from([(ISOLATION_ANNOTATION.to_string(), value.to_string())])
    }

    #[test]
    fn nothing_set_means_vm() {
        let config = Config::default();
        let policy = IsolationPolicy {
            config: &config,
            flag: None,
        };
        let decision = policy.decide(None).unwrap();
        assert_eq!(decision.isolation, Isolation::Vm);
        assert_eq!(decision.source, IsolationSource::BuiltinDefault);
    }

    #[test]
    fn config_sets_default_and_flag_overrides_it() {
        let config = config(Isolation::Container, false);
        let by_config = IsolationPolicy {
            config: &config,
            flag: None,
        };
        assert_eq!(
            by_config.decide(None).unwrap().isolation,
            Isolation::Container
        );
        let by_flag = IsolationPolicy {
            config: &config,
            flag: Some(Isolation::Vm),
        };
        let decision = by_flag.decide(None).unwrap();
        assert_eq!(decision.isolation, Isolation::Vm);
        assert_eq!(decision.source, IsolationSource::Flag);
    }

    #[test]
    fn annotation_may_always_ask_for_vm() {
        let config = config(Isolation::Container, false);
        let policy = IsolationPolicy {
            config: &config,
            flag: Some(Isolation::Container),
        };
        let decision = policy.decide(Some(&annotated("vm"))).unwrap();
        assert_eq!(decision.isolation, Isolation::Vm);
        assert_eq!(decision.source, IsolationSource::Annotation);
    }

    #[test]
    fn annotation_asking_for_container_needs_operator_consent() {
        let strict = config(Isolation::Vm, false);
        let policy = IsolationPolicy {
            config: &strict,
            flag: None,
        };
        assert!(matches!(
            policy.decide(Some(&annotated("container"))),
            Err(IsolationError::AnnotationNotAllowed)
        ));
        let lenient = config(Isolation::Vm, true);
        let policy = IsolationPolicy {
            config: &lenient,
            flag: None,
        };
        assert_eq!(
            policy
                .decide(Some(&annotated("container")))
                .unwrap()
                .isolation,
            Isolation::Container
        );
    }

    #[test]
    fn annotation_never_overrides_an_explicit_vm_flag() {
        // Even where the operator config lets workloads choose the shared kernel.
        let lenient = config(Isolation::Container, true);
        let policy = IsolationPolicy {
            config: &lenient,
            flag: Some(Isolation::Vm),
        };
        let err = policy.decide(Some(&annotated("container"))).unwrap_err();
        assert!(matches!(err, IsolationError::AnnotationOverridesFlag));
        assert!(err.to_string().contains("--isolation vm"), "{err}");
        // The annotation still chooses where no flag was given, and may ask for vm.
        let unflagged = IsolationPolicy {
            config: &lenient,
            flag: None,
        };
        let decision = unflagged.decide(Some(&annotated("container"))).unwrap();
        assert_eq!(decision.isolation, Isolation::Container);
        assert_eq!(decision.source, IsolationSource::Annotation);
        assert_eq!(
            policy.decide(Some(&annotated("vm"))).unwrap().isolation,
            Isolation::Vm
        );
    }

    #[test]
    fn unknown_annotation_value_is_an_error() {
        let config = config(Isolation::Vm, true);
        let policy = IsolationPolicy {
            config: &config,
            flag: None,
        };
        let err = policy.decide(Some(&annotated("gvisor"))).unwrap_err();
        assert!(err.to_string().contains("gvisor"));
    }
}
