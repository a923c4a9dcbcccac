//! The stream graph: which input feeds each stream, which streams run
//! behind an exchange, and what each shard's inputs are. Decided once, at
//! start, on the control plane.
//!
//! A stream reads one input, or two for a join (ports 0 and 1: the left
//! and right side). Each port is fed on its own: by a source route, by an
//! upstream stream on the same shard, or through an exchange.

use laminar_runtime::{Error, ErrorCode, Result};
use laminar_sql::{Routing, StreamInput, StreamPlan};

use crate::pipeline::{Input, SourceRuntime};

/// Where rows go: one input port of one stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Target {
    pub stream: usize,
    /// 0, or 1 for a join's right side.
    pub port: usize,
}

/// An exchange: `target` reads `upstream`'s output re-partitioned by
/// `routing` (over the upstream's output columns).
pub(crate) struct Exchange {
    pub upstream: usize,
    pub target: Target,
    pub routing: Routing,
}

/// How one port is fed.
enum Feed {
    Source { source: usize, route: usize },
    Local,
    Exchange,
}

pub(crate) struct Graph {
    feeds: Vec<(Target, Feed)>,
    sources: usize,
    source_routes: Vec<usize>,
    source_idle_timeouts: Vec<Option<std::time::Duration>>,
    pub exchanges: Vec<Exchange>,
    /// `[stream]` -> ports fed directly by its output on the same shard.
    pub local: Vec<Vec<Target>>,
    /// `[stream]` -> streams fed by its late rows (its late side output).
    pub late: Vec<Vec<usize>>,
    /// `[stream]` -> exchanges fed by its output.
    pub exchanges_of: Vec<Vec<usize>>,
    /// `[stream]` -> the inputs whose rows and watermarks drive it.
    pub roots: Vec<Vec<usize>>,
}

impl Graph {
    /// Works out the graph and records each source's distinct routings in
    /// `sources`.
    pub fn build(streams: &[StreamPlan], sources: &mut [SourceRuntime]) -> Result<Self> {
        let mut graph = Graph {
            feeds: Vec::with_capacity(streams.len()),
            sources: sources.len(),
            source_routes: Vec::new(),
            source_idle_timeouts: Vec::new(),
            exchanges: Vec::new(),
            local: vec![Vec::new(); streams.len()],
            late: vec![Vec::new(); streams.len()],
            exchanges_of: vec![Vec::new(); streams.len()],
            roots: Vec::with_capacity(streams.len()),
        };
        for (id, plan) in streams.iter().enumerate() {
            let mut roots = Vec::new();
            let ports = std::iter::once((&plan.input, &plan.routing)).chain(
                plan.right_input
                    .as_ref()
                    .map(|(input, routing)| (input, routing)),
            );
            for (port, (input, routing)) in ports.enumerate() {
                let target = Target { stream: id, port };
                // Streams can only read streams created before them, so
                // creation order is a topological order.
                let upstream = |name: &String| {
                    streams[..id]
                        .iter()
                        .position(|s| &s.name == name)
                        .ok_or_else(|| unknown(name))
                };
                match input {
                    StreamInput::Source(name) => {
                        let source = sources
                            .iter()
                            .position(|s| s.name == *name)
                            .ok_or_else(|| unknown(name))?;
                        let routes = &mut sources[source].routes;
                        let route = match routes.iter().position(|r| r == routing) {
                            Some(route) => route,
                            None => {
                                routes.push(routing.clone());
                                routes.len() - 1
                            }
                        };
                        graph.feeds.push((target, Feed::Source { source, route }));
                        roots.push(source);
                    }
                    StreamInput::LateOf(name) => {
                        let upstream = upstream(name)?;
                        graph.late[upstream].push(id);
                        graph.feeds.push((target, Feed::Local));
                        roots.extend(graph.roots[upstream].iter().copied());
                    }
                    StreamInput::Stream(name) => {
                        let upstream = upstream(name)?;
                        if *routing == Routing::Any {
                            graph.local[upstream].push(target);
                            graph.feeds.push((target, Feed::Local));
                            roots.extend(graph.roots[upstream].iter().copied());
                        } else {
                            let exchange = graph.exchanges.len();
                            graph.exchanges.push(Exchange {
                                upstream,
                                target,
                                routing: routing.clone(),
                            });
                            graph.exchanges_of[upstream].push(exchange);
                            graph.feeds.push((target, Feed::Exchange));
                            roots.push(sources.len() + exchange);
                        }
                    }
                }
            }
            roots.sort_unstable();
            roots.dedup();
            graph.roots.push(roots);
        }
        graph.source_routes = sources.iter().map(|s| s.routes.len()).collect();
        graph.source_idle_timeouts = sources.iter().map(|s| s.idle_timeout).collect();
        Ok(graph)
    }

    /// A shard's inputs: sources (by source id), then exchanges.
    pub fn inputs(&self) -> Vec<Input> {
        let mut inputs: Vec<Input> = self
            .source_routes
            .iter()
            .zip(&self.source_idle_timeouts)
            .map(|(&routes, &idle_timeout)| Input {
                watermark_ms: i64::MIN,
                routes: vec![Vec::new(); routes],
                targets: Vec::new(),
                is_source: true,
                idle_timeout,
            })
            .collect();
        for exchange in &self.exchanges {
            inputs.push(Input {
                watermark_ms: i64::MIN,
                routes: vec![vec![exchange.target]],
                targets: vec![exchange.target],
                is_source: false,
                idle_timeout: None,
            });
        }
        for (target, feed) in &self.feeds {
            if let Feed::Source { source, route } = feed {
                inputs[*source].routes[*route].push(*target);
                inputs[*source].targets.push(*target);
            }
        }
        debug_assert_eq!(inputs.len(), self.sources + self.exchanges.len());
        inputs
    }
}

fn unknown(name: &str) -> Error {
    Error::new(
        ErrorCode::UnknownObject,
        format!("unknown source or stream '{name}'"),
    )
}
