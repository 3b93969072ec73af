use super::*;

const MS: Duration = Duration::from_millis(1);

fn at(ms: u64) -> Time {
    Time::from_duration(MS * ms as u32)
}

fn peer(n: u32) -> Nid {
    Nid::mem(n, 0)
}

/// Runs the monitor's timers up to `until` (ms), one deadline at a time, like a driver
/// that is never late; a peer "answers" a ping after `rtt` ms if `answers`. Returns the
/// actions with their times.
fn drive(m: &mut Monitor, until: u64, answers: impl Fn(Time) -> Option<u64>) -> Vec<(u64, Action)> {
    let mut log = Vec::new();
    let mut replies: Vec<Time> = Vec::new();
    loop {
        let next = [m.next_deadline(), replies.iter().min().copied()]
            .into_iter()
            .flatten()
            .min();
        let Some(t) = next.filter(|t| *t <= at(until)) else {
            return log;
        };
        if let Some(i) = replies.iter().position(|r| *r == t) {
            replies.swap_remove(i);
            if let Some(a) = m.heard(peer(1), t) {
                log.push((t.as_duration().as_millis() as u64, a));
            }
            continue;
        }
        let mut out = Vec::new();
        m.tick(t, &mut out);
        for a in out {
            if a == Action::Ping(peer(1)) {
                if let Some(rtt) = answers(t) {
                    replies.push(t + MS * rtt as u32);
                }
            }
            log.push((t.as_duration().as_millis() as u64, a));
        }
    }
}

fn downs(log: &[(u64, Action)]) -> Vec<u64> {
    log.iter()
        .filter(|(_, a)| matches!(a, Action::Down { .. }))
        .map(|(t, _)| *t)
        .collect()
}

#[test]
fn idle_unwatched_peers_cost_nothing() {
    let mut m = Monitor::new(HealthConfig::default());
    assert_eq!(m.heard(peer(1), at(5)), None);
    assert_eq!(m.next_deadline(), None);
    // Interest comes and goes: after it goes, the peer is forgotten at its next look.
    m.interest_started(peer(1), at(0));
    m.interest_ended(peer(1));
    let log = drive(&mut m, 10_000, |_| None);
    assert!(log.is_empty(), "{log:?}");
    assert_eq!((m.monitored(), m.peer(peer(1))), (0, None));
    assert_eq!((m.sizes(), m.next_deadline()), ((0, 0), None));
}

#[test]
fn a_silent_peer_is_pinged_once_per_interval_suspected_then_down_after_detect_mult() {
    let mut m = Monitor::new(HealthConfig::default());
    m.watch(peer(1), at(0), true);
    let log = drive(&mut m, 1000, |_| None);
    let pings: Vec<u64> = log
        .iter()
        .filter(|(_, a)| *a == Action::Ping(peer(1)))
        .map(|(t, _)| *t)
        .collect();
    // Pings at 100 and 200 while suspected; Down at 300 (3 x 100 ms); then probes with
    // doubling gaps: 400, 600, 1000.
    assert_eq!(downs(&log), vec![300]);
    assert_eq!(pings, vec![100, 200, 400, 600, 1000]);
    assert_eq!(
        log.iter().find_map(|(_, a)| match a {
            Action::Down { silent, .. } => Some(*silent),
            _ => None,
        }),
        Some(MS * 300)
    );
    assert_eq!(m.peer(peer(1)).unwrap().state, PeerState::Down);
    assert!(m.peer(peer(1)).unwrap().health < HEALTH_MAX);
}

#[test]
fn a_peer_answering_slowly_but_within_the_interval_is_never_down() {
    let mut m = Monitor::new(HealthConfig::default());
    m.watch(peer(1), at(0), true);
    let log = drive(&mut m, 60_000, |_| Some(95));
    assert!(downs(&log).is_empty(), "{log:?}");
    assert_eq!(m.peer(peer(1)).unwrap().health, HEALTH_MAX);
    // One ping per interval of silence, never more.
    let pings = log
        .iter()
        .filter(|(_, a)| matches!(a, Action::Ping(_)))
        .count();
    assert!((250..=320).contains(&pings), "{pings} pings in 60 s");
    // Pinged after 100 ms of silence, answered 95 ms later: the nearest it came to Down.
    assert_eq!(m.stats().longest_silence, MS * 195);
}

/// A watched peer last heard at 90 ms: Suspect (and pinged) at the look at 190, and the
/// next look promised to the driver at 290.
fn suspect_at_190_with_a_look_promised_at_290() -> Monitor {
    let mut m = Monitor::new(HealthConfig::default());
    m.watch(peer(1), at(0), true);
    m.heard(peer(1), at(90));
    let mut out = Vec::new();
    for due in [100, 190] {
        assert_eq!(m.next_deadline(), Some(at(due)));
        m.tick(at(due), &mut out);
    }
    assert_eq!(out, vec![Action::Ping(peer(1))], "Suspect at 190");
    assert_eq!(m.next_deadline(), Some(at(290)));
    m
}

#[test]
fn a_stall_of_its_own_that_ends_with_the_answer_is_not_counted_as_the_peers_silence() {
    let mut m = suspect_at_190_with_a_look_promised_at_290();
    // This node stops until 700 and then finds the answer waiting: the frame is handled
    // before the late look. Of the 610 ms of silence, the 410 its look came late are its
    // own.
    m.heard(peer(1), at(700));
    assert_eq!(m.stats().longest_silence, MS * 200);
    assert_eq!((m.stats().lag_stretches, m.stats().max_lag), (1, MS * 410));
    assert_eq!(m.peer(peer(1)).unwrap().state, PeerState::Up);
    // The look that follows finds nothing more to forgive, and nothing to accuse.
    let mut out = Vec::new();
    m.tick(at(700), &mut out);
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(m.stats().lag_stretches, 1);
}

#[test]
fn hearing_a_suspect_peer_in_time_leaves_a_later_stall_forgivable() {
    let mut m = suspect_at_190_with_a_look_promised_at_290();
    // Heard in time (before the look at 290), then this node stops until 700 without
    // asking for its next deadline: the stall after the promised look is its own.
    m.heard(peer(1), at(250));
    assert_eq!(m.stats().longest_silence, MS * 160);
    let mut out = Vec::new();
    m.tick(at(700), &mut out);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Down { .. })),
        "{out:?}"
    );
    assert_eq!((m.stats().lag_stretches, m.stats().max_lag), (1, MS * 410));
}

#[test]
fn only_a_suspect_peer_heard_again_sets_the_longest_silence() {
    let mut m = Monitor::new(HealthConfig::default());
    m.watch(peer(1), at(0), true);
    m.heard(peer(1), at(90)); // Up: 90 ms of silence is nothing
    assert_eq!(m.stats().longest_silence, Duration::ZERO);
    let mut out = Vec::new();
    m.tick(at(190), &mut out); // a look finds it silent for an interval: Suspect
    assert_eq!(out, vec![Action::Ping(peer(1))]);
    m.heard(peer(1), at(250));
    assert_eq!(m.stats().longest_silence, MS * 160);
    m.heard(peer(1), at(300)); // Up again: unchanged
    assert_eq!(m.stats().longest_silence, MS * 160);
}

#[test]
fn probing_backs_off_to_its_cap_and_a_reply_brings_the_peer_back() {
    let cfg = HealthConfig {
        probe_max: MS * 1000,
        ..HealthConfig::default()
    };
    let mut m = Monitor::new(cfg);
    m.interest_started(peer(1), at(0));
    let log = drive(&mut m, 10_000, |_| None);
    let probes: Vec<u64> = log
        .iter()
        .filter(|(t, a)| *t > 300 && matches!(a, Action::Ping(_)))
        .map(|(t, _)| *t)
        .collect();
    let gaps: Vec<u64> = probes.windows(2).map(|w| w[1] - w[0]).collect();
    assert_eq!(&gaps[..4], &[200, 400, 800, 1000], "{probes:?}");
    assert!(gaps[4..].iter().all(|&g| g == 1000), "{gaps:?}");
    assert_eq!(
        m.heard(peer(1), at(10_050)),
        Some(Action::Recovered(peer(1)))
    );
    assert_eq!(m.peer(peer(1)).unwrap().state, PeerState::Up);
    assert_eq!(m.stats().recoveries, 1);
}

/// A `probe_max` below the interval (zero, which validation refuses, included) probes a
/// Down peer once an interval: it booked the next probe at the same instant, which the
/// same tick then ran, for ever.
#[test]
fn a_down_peer_is_probed_no_more_often_than_once_an_interval() {
    for probe_max in [Duration::ZERO, MS * 40] {
        let cfg = HealthConfig {
            probe_max,
            ..HealthConfig::default()
        };
        let mut m = Monitor::new(cfg);
        m.watch(peer(1), at(0), true);
        let log = drive(&mut m, 1000, |_| None);
        assert_eq!(downs(&log), vec![300]);
        let probes: Vec<u64> = log
            .iter()
            .filter(|(t, a)| *t >= 300 && matches!(a, Action::Ping(_)))
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(
            probes,
            [400, 500, 600, 700, 800, 900, 1000],
            "{probe_max:?}"
        );
    }
}

/// Health regained per frame is capped at the best health, whatever the sensitivity (a
/// `u16` sum overflowed past 65,535).
#[test]
fn a_sensitivity_beyond_the_best_health_does_not_overflow() {
    let cfg = HealthConfig {
        sensitivity: u16::MAX,
        ..HealthConfig::default()
    };
    let mut m = Monitor::new(cfg);
    m.interest_started(peer(1), at(0));
    m.heard(peer(1), at(1));
    assert_eq!(m.peer(peer(1)).unwrap().health, HEALTH_MAX);
}

/// A watched peer last heard at 90 ms; this node stalls: its timer, due at 100 ms, runs
/// at 700 ms (6 intervals later). Returns the monitor and what that late tick did.
fn stalled_from_100_to_700_ms() -> (Monitor, Vec<Action>) {
    let mut m = Monitor::new(HealthConfig::default());
    m.watch(peer(1), at(0), true);
    m.heard(peer(1), at(90));
    assert_eq!(m.next_deadline(), Some(at(100)));
    let mut out = Vec::new();
    m.tick(at(700), &mut out);
    (m, out)
}

/// A watched peer last heard at 10 ms, pinged at 110 and 210; this node stops through the
/// look at 310 that would find it Down (the whole machine did: the peer too) and comes back
/// at 600 with nothing from the peer yet. Returns the monitor and what that late tick did.
fn stalled_through_the_down_look() -> (Monitor, Vec<Action>) {
    let mut m = Monitor::new(HealthConfig::default());
    m.watch(peer(1), at(0), true);
    m.heard(peer(1), at(10));
    let mut out = Vec::new();
    for due in [100, 110, 210] {
        assert_eq!(m.next_deadline(), Some(at(due)));
        m.tick(at(due), &mut out);
    }
    assert_eq!(
        out,
        vec![Action::Ping(peer(1)); 2],
        "Suspect at 110, pinged twice"
    );
    assert_eq!(
        m.next_deadline(),
        Some(at(310)),
        "the look that would find it Down"
    );
    let mut out = Vec::new();
    m.tick(at(600), &mut out);
    (m, out)
}

#[test]
fn after_a_stall_of_its_own_through_a_down_look_the_peer_gets_an_interval_to_be_heard() {
    // It was not listening: the peer is asked again and has an interval to answer, not
    // judged on the spot.
    let (mut m, out) = stalled_through_the_down_look();
    assert_eq!(out, vec![Action::Ping(peer(1))]);
    assert_eq!(m.peer(peer(1)).unwrap().state, PeerState::Suspect);
    assert_eq!(m.heard(peer(1), at(650)), None);
    assert_eq!(m.peer(peer(1)).unwrap().state, PeerState::Up);
    // A peer that stays silent is Down an interval after this node came back.
    let (mut silent, _) = stalled_through_the_down_look();
    assert_eq!(silent.next_deadline(), Some(at(700)));
    let mut out = Vec::new();
    silent.tick(at(700), &mut out);
    assert!(
        matches!(out[..], [Action::Down { silent: s, .. }] if s == MS * 300),
        "{out:?}"
    );
}

/// When a peer silent from 10 ms on is found Down if every look of this node comes `late`
/// after it was due (by more than `lag_limit`: each is a stall of its own); None if not
/// by 10 s.
fn down_when_every_look_is_late(cfg: HealthConfig, late: Duration) -> Option<Time> {
    let mut m = Monitor::new(cfg);
    m.watch(peer(1), at(0), true);
    m.heard(peer(1), at(10));
    while let Some(due) = m.next_deadline() {
        let now = due + late;
        if now > at(10_000) {
            return None;
        }
        let mut out = Vec::new();
        m.tick(now, &mut out);
        if out.iter().any(|a| matches!(a, Action::Down { .. })) {
            return Some(now);
        }
    }
    None
}

#[test]
fn a_node_whose_looks_all_come_late_still_finds_a_dead_peer_down() {
    // Default (100 ms, Down at 300): looks 60 ms late, past the 50 ms limit. Each late
    // look's lag is forgiven (three of them before the Down look) and the grace comes
    // once: an interval and two late looks more.
    let default = HealthConfig::default();
    let down = down_when_every_look_is_late(default, MS * 60).expect("Down at all");
    assert!(down <= at(10 + 300 + 100 + 5 * 60), "Down at {down:?}");
    // 3 ms (Down at 9): looks 2 ms late, past the 1.5 ms limit.
    let short = HealthConfig {
        interval: MS * 3,
        ..default
    };
    let down = down_when_every_look_is_late(short, MS * 2).expect("Down at all");
    assert!(down <= at(10 + 9 + 3 + 5 * 2), "Down at {down:?}");
}

#[test]
fn a_late_timer_stretches_silence_instead_of_accusing_the_peer() {
    let (m, out) = stalled_from_100_to_700_ms();
    assert!(
        !out.iter().any(|a| matches!(a, Action::Down { .. })),
        "{out:?}"
    );
    assert_eq!(m.stats().lag_stretches, 1);
    assert_eq!(m.stats().max_lag, MS * 600);
    // Without the stall, the same silence is a Down.
    let mut honest = Monitor::new(HealthConfig::default());
    honest.watch(peer(1), at(0), true);
    honest.heard(peer(1), at(90));
    let log = drive(&mut honest, 700, |_| None);
    assert_eq!(downs(&log), vec![390]);
    assert_eq!(honest.stats().lag_stretches, 0);
}

/// At a 3 ms interval (detect time 9 ms), a stall of this node of 8 ms is forgiven: the
/// tolerance is half an interval there, not the default 50 ms, which would have counted
/// the stall against the peer.
#[test]
fn at_a_short_interval_a_stall_shorter_than_the_default_tolerance_is_forgiven() {
    let cfg = HealthConfig {
        interval: MS * 3,
        ..HealthConfig::default()
    };
    assert_eq!(cfg.lag_limit(), Duration::from_micros(1500));
    assert_eq!(
        HealthConfig::default().lag_limit(),
        MS * 50,
        "the default interval's"
    );
    let mut m = Monitor::new(cfg);
    m.watch(peer(1), at(0), true);
    m.heard(peer(1), at(1));
    // Due at 3 ms; this node stalls until 11 ms (10 ms of silence: past the detect time),
    // then hears the peer (its frame waited in our socket) at 12 ms.
    assert_eq!(m.next_deadline(), Some(at(3)));
    let mut out = Vec::new();
    m.tick(at(11), &mut out);
    assert!(
        !out.iter().any(|a| matches!(a, Action::Down { .. })),
        "{out:?}"
    );
    assert_eq!(m.stats().lag_stretches, 1);
    m.heard(peer(1), at(12));
    assert_eq!(m.peer(peer(1)).map(|h| h.state), Some(PeerState::Up));
    // Without the stall, the same silence is a Down at 10 ms.
    let mut honest = Monitor::new(cfg);
    honest.watch(peer(1), at(0), true);
    honest.heard(peer(1), at(1));
    let log = drive(&mut honest, 12, |_| None);
    assert_eq!(downs(&log), vec![10]);
}

#[test]
fn a_poked_down_peer_is_probed_again_and_forgotten_once_back() {
    let mut m = Monitor::new(HealthConfig::default());
    m.interest_started(peer(1), at(0));
    let log = drive(&mut m, 350, |_| None);
    assert_eq!(downs(&log), vec![300]);
    // The operations are gone (failed PeerDead): the Down peer is remembered, not probed.
    m.interest_ended(peer(1));
    assert!(m.is_down(peer(1)));
    let log = drive(&mut m, 5_000, |_| None);
    assert!(log.is_empty(), "{log:?}");
    // A new attempt to reach it pokes one probe.
    m.poke(peer(1), at(5_000));
    let log = drive(&mut m, 10_000, |_| None);
    assert_eq!(log, vec![(5_000, Action::Ping(peer(1)))]);
    // It answers: back, and forgotten (nobody is interested).
    assert_eq!(
        m.heard(peer(1), at(10_001)),
        Some(Action::Recovered(peer(1)))
    );
    assert_eq!((m.peer(peer(1)), m.monitored()), (None, 0));
}

/// Wanted at every millisecond (an application retrying, a router's stream of frames for
/// it), a Down peer nobody monitors is probed on its backoff, not at every want: each
/// want used to book a probe at once.
#[test]
fn a_down_peer_poked_without_pause_is_probed_on_its_backoff() {
    let mut m = Monitor::new(HealthConfig::default());
    m.interest_started(peer(1), at(0));
    let log = drive(&mut m, 350, |_| None);
    assert_eq!(downs(&log), vec![300]);
    m.interest_ended(peer(1));
    let mut probes = Vec::new();
    for ms in 5_000..7_000 {
        m.poke(peer(1), at(ms));
        let mut out = Vec::new();
        m.tick(at(ms), &mut out);
        probes.extend(out.iter().map(|a| (ms, *a)));
    }
    // 200, 400, 800 ms apart, as a monitored Down peer's probes.
    let ping = Action::Ping(peer(1));
    assert_eq!(
        probes,
        vec![(5_000, ping), (5_200, ping), (5_600, ping), (6_400, ping)]
    );
}

/// Drives a silent, watched peer while a health frame handed to the driver at `stuck_from`
/// stays there until `stuck_until` (ms). Returns the time of the Down verdict.
fn down_with_stuck_frame(stuck_from: u64, stuck_until: u64) -> (u64, HealthStats) {
    let mut m = Monitor::new(HealthConfig::default());
    m.watch(peer(1), at(0), true);
    let mut out = Vec::new();
    while let Some(t) = m.next_deadline().filter(|t| *t <= at(5_000)) {
        let ms = t.as_duration().as_millis() as u64;
        if ms >= stuck_from {
            m.backlog(at(stuck_from), at(ms.min(stuck_until)));
        }
        m.tick(t, &mut out);
        if out.iter().any(|a| matches!(a, Action::Down { .. })) {
            return (ms, m.stats());
        }
    }
    panic!("never Down");
}

#[test]
fn a_backed_up_health_lane_stretches_silence_for_at_most_one_detection_time() {
    // Nothing stuck: Down after 3 intervals of silence.
    let (honest, stats) = down_with_stuck_frame(100, 100);
    assert_eq!(honest, 300);
    assert_eq!(stats.lag_stretches, 0);
    // A frame that leaves within the tolerance (50 ms) is no sign of lag.
    let (quick, stats) = down_with_stuck_frame(100, 140);
    assert_eq!((quick, stats.lag_stretches), (300, 0));
    // The PING of 100 ms stuck until 250 ms: this node's silence, not the peer's.
    let (late, stats) = down_with_stuck_frame(100, 250);
    assert_eq!(late, 450, "stretched by the 150 ms it was stuck");
    assert!(stats.backlog_stretches >= 1);
    assert_eq!(stats.lag_stretches, stats.backlog_stretches);
    // Stuck for good (a driver may be stuck on the peer itself): forgiven for one
    // detection time, then Down.
    let (capped, stats) = down_with_stuck_frame(100, u64::MAX);
    assert_eq!(capped, 600, "stretched by one detection time, no more");
    assert!(stats.max_lag <= MS * 300, "{stats:?}");
}

#[test]
fn one_stall_seen_twice_is_forgiven_once() {
    // A health frame was stuck through the same stall.
    let (mut m, _) = stalled_from_100_to_700_ms();
    m.backlog(at(100), at(700));
    let stats = m.stats();
    assert_eq!((stats.lag_stretches, stats.backlog_stretches), (1, 0));
    assert_eq!(stats.max_lag, MS * 600);
    let heard = m.peer(peer(1)).unwrap().last_heard;
    assert_eq!(heard, at(690), "stretched by 600 ms once, not twice");
}

#[test]
fn an_entry_lingers_unseen_until_its_look_and_a_new_operation_goes_on_with_its_silence() {
    let mut m = Monitor::new(HealthConfig::default());
    m.interest_started(peer(1), at(0));
    assert_eq!(m.heard(peer(1), at(10)), None);
    // Silent past one interval: Suspect, pinged.
    let log = drive(&mut m, 150, |_| None);
    assert_eq!(log, vec![(110, Action::Ping(peer(1)))]);
    assert_eq!(m.peer(peer(1)).map(|h| h.state), Some(PeerState::Suspect));
    assert!(!m.vouches_for(peer(1)));
    // The operation ends: the entry stays for its look, but nobody sees it.
    m.interest_ended(peer(1));
    assert_eq!((m.peer(peer(1)), m.monitored(), m.all()), (None, 0, vec![]));
    assert_eq!(m.sizes().0, 1, "lingering until its look");
    // Another operation before that look: the same silence goes on, Suspect, and is
    // judged as it would have been: pinged again, Down 300 ms after it was last heard.
    m.interest_started(peer(1), at(160));
    assert_eq!(m.peer(peer(1)).map(|h| h.state), Some(PeerState::Suspect));
    let log = drive(&mut m, 400, |_| None);
    assert_eq!(log.first(), Some(&(210, Action::Ping(peer(1)))), "{log:?}");
    assert_eq!(downs(&log), vec![310]);

    // A peer that answered, left alone once its operation ended: gone at its look, with
    // no ping and no verdict.
    let mut m = Monitor::new(HealthConfig::default());
    m.interest_started(peer(1), at(0));
    assert_eq!(m.heard(peer(1), at(10)), None);
    m.interest_ended(peer(1));
    let log = drive(&mut m, 10_000, |_| None);
    assert!(log.is_empty(), "{log:?}");
    assert_eq!((m.sizes().0, m.next_deadline()), (0, None));
}

/// A dead peer sent one operation after another, each timing out (its interest ending)
/// before the detection time, the next started at once: it is still found Down, within
/// the detection time of its last frame and an interval, as one long operation's would be.
#[test]
fn a_dead_peer_whose_operations_each_time_out_before_the_detection_time_is_found_down() {
    let mut m = Monitor::new(HealthConfig::default());
    assert_eq!(m.heard(peer(1), at(0)), None);
    m.interest_started(peer(1), at(0));
    assert_eq!(m.heard(peer(1), at(1)), None); // its last frame
    let mut log = Vec::new();
    for op in 0..10u64 {
        // Each operation times out after 200 ms (the detection time is 300 ms).
        let (started, ends) = (op * 200, op * 200 + 200);
        if op > 0 {
            m.interest_started(peer(1), at(started));
        }
        log.extend(drive(&mut m, ends - 1, |_| None));
        m.interest_ended(peer(1));
    }
    let downs = downs(&log);
    assert!(!downs.is_empty(), "never found Down: {log:?}");
    assert!(downs[0] <= 1 + 300 + 100, "Down at {} ms", downs[0]);
}

#[test]
fn the_deadline_follows_a_top_whose_peer_changed() {
    let mut m = Monitor::new(HealthConfig::default());
    m.watch(peer(1), at(0), true);
    m.watch(peer(2), at(50), true);
    assert_eq!(m.next_deadline(), Some(at(100)));
    // The peer of the top timer goes: its look is stale, even though it is still the
    // heap's top.
    m.watch(peer(1), at(60), false);
    assert_eq!(m.next_deadline(), Some(at(150)));
    // A Down peer whose operations end is remembered, unprobed: its booked probe is
    // stale though still at the top.
    let mut m = Monitor::new(HealthConfig::default());
    m.interest_started(peer(3), at(0));
    let log = drive(&mut m, 350, |_| None);
    assert!(m.is_down(peer(3)), "{log:?}");
    assert_eq!(m.next_deadline(), Some(at(400)));
    m.interest_ended(peer(3));
    assert!(m.is_down(peer(3)));
    assert_eq!(m.next_deadline(), None);
}

#[test]
fn a_resumed_entry_vouches_as_before_and_a_new_one_only_once_heard() {
    let mut m = Monitor::new(HealthConfig::default());
    m.interest_started(peer(1), at(0));
    m.heard(peer(1), at(5));
    assert!(m.vouches_for(peer(1)));
    m.interest_ended(peer(1));
    assert!(!m.vouches_for(peer(1)), "lingering: unseen");
    m.interest_started(peer(1), at(20));
    assert!(
        m.vouches_for(peer(1)),
        "the same monitoring: heard 15 ms ago"
    );
    // Once gone (nobody came back before its look), monitoring starts afresh.
    m.interest_ended(peer(1));
    assert!(drive(&mut m, 1_000, |_| None).is_empty());
    assert_eq!(m.sizes().0, 0, "gone");
    m.interest_started(peer(1), at(1_000));
    assert!(
        !m.vouches_for(peer(1)),
        "a new monitoring has heard nothing yet"
    );
    m.heard(peer(1), at(1_005));
    assert!(m.vouches_for(peer(1)));
}

#[test]
fn a_recovered_peer_nobody_wants_goes_with_its_look() {
    let mut m = Monitor::new(HealthConfig::default());
    m.interest_started(peer(1), at(0));
    let log = drive(&mut m, 350, |_| None);
    assert!(m.is_down(peer(1)), "{log:?}");
    m.interest_ended(peer(1));
    m.poke(peer(1), at(400));
    assert_eq!(m.next_deadline(), Some(at(400)));
    // Back, and nobody's business: the entry goes, and so does its probe.
    assert_eq!(m.heard(peer(1), at(390)), Some(Action::Recovered(peer(1))));
    assert_eq!((m.sizes().0, m.next_deadline()), (0, None));
}

#[test]
fn forgetting_the_uninteresting_drops_lingering_entries_and_their_looks() {
    let mut m = Monitor::new(HealthConfig::default());
    m.interest_started(peer(1), at(0));
    m.interest_started(peer(2), at(0));
    m.interest_ended(peer(1));
    assert_eq!(m.sizes().0, 2);
    m.forget_uninteresting(|_| false);
    assert_eq!((m.sizes().0, m.monitored()), (1, 1));
    m.interest_ended(peer(2));
    m.forget_uninteresting(|_| false);
    assert_eq!((m.sizes().0, m.next_deadline()), (0, None));
}

#[test]
fn entries_linger_only_while_the_table_is_small() {
    let mut m = Monitor::new(HealthConfig::default());
    let many = LINGER_WHILE_PEERS_AT_MOST as u32 + 1;
    for n in 0..many {
        m.interest_started(peer(n), at(0));
    }
    // Past the limit: the entry goes at once.
    m.interest_ended(peer(0));
    assert_eq!(m.sizes().0, LINGER_WHILE_PEERS_AT_MOST);
    // At it: the next one lingers.
    m.interest_ended(peer(1));
    assert_eq!(m.sizes().0, LINGER_WHILE_PEERS_AT_MOST);
    assert_eq!(m.monitored(), LINGER_WHILE_PEERS_AT_MOST - 1);
}
