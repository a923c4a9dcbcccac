//! The stream graph: which input feeds each stream, which streams run
//! behind an exchange, and what each shard's inputs are. Decided once, at
//! start, on the control plane.

use laminar_runtime::{Error, ErrorCode, Result};
use laminar_sql::{Routing, StreamInput, StreamPlan};

use crate::pipeline::{Input, SourceRuntime};

/// An exchange: `target` reads `upstream`'s output re-partitioned by
/// `routing` (over the upstream's output columns).
pub(crate) struct Exchange {
    pub upstream: usize,
    pub target: usize,
    pub routing: Routing,
}

/// How one stream is fed.
enum Feed {
    Source { source: usize, route: usize },
    Local,
    Exchange,
}

pub(crate) struct Graph {
    feeds: Vec<Feed>,
    sources: usize,
    source_routes: Vec<usize>,
    source_idle_timeouts: Vec<Option<std::time::Duration>>,
    pub exchanges: Vec<Exchange>,
    /// `[stream]` -> streams fed directly by its output on the same shard.
    pub local: Vec<Vec<usize>>,
    /// `[stream]` -> streams fed by its late rows (its late side output).
    pub late: Vec<Vec<usize>>,
    /// `[stream]` -> exchanges fed by its output.
    pub exchanges_of: Vec<Vec<usize>>,
    /// `[stream]` -> the input whose rows and watermarks drive it.
    pub root_input: Vec<usize>,
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
            root_input: Vec::with_capacity(streams.len()),
        };
        for (id, plan) in streams.iter().enumerate() {
            match &plan.input {
                StreamInput::Source(name) => {
                    let source = sources
                        .iter()
                        .position(|s| &s.name == name)
                        .ok_or_else(|| unknown(name))?;
                    let routes = &mut sources[source].routes;
                    let route = match routes.iter().position(|r| *r == plan.routing) {
                        Some(route) => route,
                        None => {
                            routes.push(plan.routing.clone());
                            routes.len() - 1
                        }
                    };
                    graph.feeds.push(Feed::Source { source, route });
                    graph.root_input.push(source);
                }
                StreamInput::LateOf(name) => {
                    let upstream = streams[..id]
                        .iter()
                        .position(|s| &s.name == name)
                        .ok_or_else(|| unknown(name))?;
                    graph.late[upstream].push(id);
                    graph.feeds.push(Feed::Local);
                    graph.root_input.push(graph.root_input[upstream]);
                }
                StreamInput::Stream(name) => {
                    // Streams can only read streams created before them, so
                    // creation order is a topological order.
                    let upstream = streams[..id]
                        .iter()
                        .position(|s| &s.name == name)
                        .ok_or_else(|| unknown(name))?;
                    if plan.routing == Routing::Any {
                        graph.local[upstream].push(id);
                        graph.feeds.push(Feed::Local);
                        graph.root_input.push(graph.root_input[upstream]);
                    } else {
                        let exchange = graph.exchanges.len();
                        graph.exchanges.push(Exchange {
                            upstream,
                            target: id,
                            routing: plan.routing.clone(),
                        });
                        graph.exchanges_of[upstream].push(exchange);
                        graph.feeds.push(Feed::Exchange);
                        graph.root_input.push(sources.len() + exchange);
                    }
                }
            }
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
                streams: Vec::new(),
                is_source: true,
                idle_timeout,
            })
            .collect();
        for exchange in &self.exchanges {
            inputs.push(Input {
                watermark_ms: i64::MIN,
                routes: vec![vec![exchange.target]],
                streams: vec![exchange.target],
                is_source: false,
                idle_timeout: None,
            });
        }
        for (stream, feed) in self.feeds.iter().enumerate() {
            if let Feed::Source { source, route } = feed {
                inputs[*source].routes[*route].push(stream);
                inputs[*source].streams.push(stream);
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
