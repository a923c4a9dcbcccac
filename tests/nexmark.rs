//! Nexmark q0–q22 at a small scale: every query the engine runs gives
//! DataFusion's batch answer over the same generated events (1 shard with
//! the events pushed, 2 shards with them generated inside the shards;
//! uneven batch sizes); every query it refuses does so with the
//! code listed here, so the list in docs/BENCHMARKS.md stays honest.

#[path = "../benches/nexmark/columns.rs"]
mod columns;
#[path = "../benches/nexmark/data.rs"]
mod data;
#[path = "../benches/nexmark/harness.rs"]
mod harness;

/// Queries the streaming engine does not run yet, with the error code
/// each is refused with (none at present).
const REFUSED: [(&str, &str); 0] = [];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nexmark_queries_match_the_batch_answer() {
    // 257-row batches: windows and joins see batch edges at odd places.
    let events = data::generate(20_000, 257);
    let mut failures = Vec::new();
    for query in harness::queries() {
        let refused = REFUSED.iter().find(|(q, _)| *q == query.name);
        for shards in [1, 2] {
            // At 2 shards the events are made inside the shards, each
            // generating its half.
            let input = match shards {
                1 => harness::Input::Pushed(&events),
                _ => harness::Input::Generated {
                    events: 20_000,
                    batch_rows: 257,
                },
            };
            let streamed = harness::streaming(&query, input, shards, true).await;
            let outcome = match (streamed, refused) {
                (Ok(streamed), None) => match harness::batch(&query, &events).await {
                    Ok(batch) => harness::compare(&streamed.rows, &batch).map(|_| ()),
                    Err(e) => Err(format!("batch: {e}")),
                },
                (Err(e), Some((_, code))) if e.starts_with(code) => Ok(()),
                (Err(e), Some((_, code))) => Err(format!("refused with {e}, listed as {code}")),
                (Ok(_), Some(_)) => Err("runs now: take it out of REFUSED".to_string()),
                (Err(e), None) => Err(e),
            };
            if let Err(e) = outcome {
                failures.push(format!("{} ({shards} shard(s)): {e}", query.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The events made straight into columns are the `nexmark` crate's, field
/// by field, whole and as shards' partitions.
#[test]
fn generated_columns_are_the_crates_events() {
    for (k, n) in [(0, 1), (1, 3)] {
        let ours = data::generate_partition(60_000, 1_000, k, n);
        let theirs = data::crate_events(60_000, 1_000, k, n);
        assert_eq!(ours.counts, theirs.counts, "partition {k} of {n}");
        assert_eq!(ours.pushes.len(), theirs.pushes.len());
        for (i, ((t1, b1), (t2, b2))) in ours.pushes.iter().zip(&theirs.pushes).enumerate() {
            assert_eq!(t1, t2, "batch {i}");
            for c in 0..b1.num_columns() {
                assert_eq!(
                    b1.column(c).as_ref(),
                    b2.column(c).as_ref(),
                    "partition {k} of {n}, batch {i} ({}), column {}",
                    data::TABLES[*t1],
                    b1.schema().field(c).name()
                );
            }
        }
    }
}

mod rng {
    //! The generator behind `columns.rs` is rand 0.8's `SmallRng`, draw
    //! for draw, on the scalar path and on the eight-lane one.

    use super::columns::{fill_letters, letter, round_half_away, Xoshiro, LANES};
    use rand08::rngs::SmallRng;
    use rand08::{Rng, RngCore, SeedableRng};

    #[test]
    fn the_generator_is_rands_small_rng() {
        for seed in [0, 1, 7, 1_000_000, u64::MAX] {
            let mut ours = Xoshiro::seed_from_u64(seed);
            let mut theirs = SmallRng::seed_from_u64(seed);
            for _ in 0..100 {
                assert_eq!(ours.next_u64(), theirs.next_u64(), "seed {seed}");
                assert_eq!(
                    ours.gen_range(0..1_000usize),
                    theirs.gen_range(0..1_000usize)
                );
                assert_eq!(letter(&mut ours), theirs.gen_range(b'a'..=b'z'));
            }
        }
    }

    /// Prices and event times round as `f32::round` does: halves away
    /// from zero, whole numbers unchanged, below 1 and above 2^24.
    #[test]
    fn rounding_is_f32_rounds() {
        let mut rng = Xoshiro::seed_from_u64(3);
        let edges = [
            0.0,
            0.49999997,
            0.5,
            1.5,
            2.5,
            8_388_607.5,
            16_777_216.0,
            1e8,
            4.2e9,
        ];
        let drawn = (0..100_000).map(|_| 10.0_f32.powf(rng.gen::<f32>() * 6.0) * 100.0);
        for x in edges.into_iter().chain(drawn) {
            assert_eq!(round_half_away(x), x.round() as u64, "{x}");
        }
    }

    /// A draw rand rejects (its first 32 bits times 26 land in the top 22
    /// of 2^32) is redrawn, on the lanes as in [`letter`].
    #[test]
    fn rejected_draws_are_redrawn_as_rand_does() {
        // rand's `SmallRng` with xoshiro state `state`.
        let small_rng = |state: [u64; 4]| {
            let mut seed = [0u8; 32];
            for (chunk, word) in seed.chunks_exact_mut(8).zip(state) {
                chunk.copy_from_slice(&word.to_le_bytes());
            }
            SmallRng::from_seed(seed)
        };
        // v * 26 = k * 2^32 + 2^32 - 2 for some k: a rejected draw.
        let v = (0..26u64)
            .map(|k| (k << 32) + (1 << 32) - 2)
            .find(|x| x % 26 == 0)
            .map(|x| x / 26)
            .expect("an even residue is reachable");
        assert!((v * 26) & 0xffff_ffff > u64::from(u32::MAX - 22));
        // With s0 = 0 the first output is rotl(s3, 23).
        let rejecting = [0, 0x1234_5678, 0x9abc_def0, (v << 32).rotate_right(23)];
        let mut theirs = small_rng(rejecting);
        let expected: Vec<u8> = (0..40).map(|_| theirs.gen_range(b'a'..=b'z')).collect();
        let mut ours = Xoshiro(rejecting);
        let scalar: Vec<u8> = (0..40).map(|_| letter(&mut ours)).collect();
        assert_eq!(scalar, expected);

        let mut jobs = Vec::new();
        for lane in 0..LANES {
            let state = if lane == 3 {
                rejecting
            } else {
                Xoshiro::seed_from_u64(lane as u64).0
            };
            jobs.push((Xoshiro(state), lane * 40, 40 - lane));
        }
        let mut bytes = vec![0u8; LANES * 40];
        fill_letters(&mut bytes, &jobs);
        for (lane, (rng, start, length)) in jobs.iter().enumerate() {
            let mut theirs = small_rng(rng.0);
            let want: Vec<u8> = (0..*length)
                .map(|_| theirs.gen_range(b'a'..=b'z'))
                .collect();
            assert_eq!(&bytes[*start..start + length], &want[..], "lane {lane}");
        }
    }
}

/// q7's and q15's windows have no key: each shard aggregates the bids it
/// makes, and the states are merged per window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_windows_aggregate_in_two_phases() {
    for query in harness::queries() {
        if !["q7", "q15"].contains(&query.name.as_str()) {
            continue;
        }
        let db = laminar_db::LaminarDB::builder().shards(2).build().unwrap();
        db.execute(data::DDL).await.unwrap();
        db.execute(&format!("CREATE STREAM {} AS {}", query.name, query.sql))
            .await
            .unwrap();
        let plans: String = db
            .streams()
            .iter()
            .map(|s| format!("{s}: {}\n", db.explain(s).unwrap()))
            .collect();
        assert!(plans.contains("WindowAggregate(final)"), "{plans}");
        assert!(plans.contains("(partial, on every shard)"), "{plans}");
    }
}
