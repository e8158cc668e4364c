//! `sqz_squeezer_step` under the adaptive policy: a caller that drives rounds from its own
//! event loop gets the adaptive decisions, round for round those of the adaptive call, and the
//! judgement of every domain through `sqz_squeezer_cooperation`.

use squeeze::adaptive::Adaptive;
use squeeze::backend::sim::{Behaviour, ClockMode, SimConfig, Simulator};
use squeeze::ffi::*;
use squeeze::{Action, Domain, Io, Kib};

const MIB: Kib = 1024;
const GIB: Kib = 1024 * MIB;
const SLUSH: Kib = 72 * MIB;

/// Two 8 GiB guests (dynamic-min 1 GiB): one balloons at `rate_mib` MiB/s, the other as told.
fn host(rate_mib: Kib, second: Behaviour) -> Simulator {
    let mut sim = Simulator::new(SimConfig {
        free_mem_kib: SLUSH,
        target_host_free_mem_kib: SLUSH,
        free_memory_tolerance_kib: 512,
        clock: ClockMode::FollowWait,
        time_limit_s: Some(3600.0),
        record_trace: false,
    });
    let guest = |domid| Domain::new(domid, true, GIB, 8 * GIB, 8 * GIB, 8 * GIB, 8 * GIB, 4);
    sim.add_guest(
        guest(1),
        Behaviour::Ideal {
            rate_kib_per_s: rate_mib * MIB,
        },
    )
    .unwrap();
    sim.add_guest(guest(2), second).unwrap();
    sim.advance(0.0).unwrap();
    sim
}

fn adaptive_squeezer() -> *mut sqz_squeezer {
    let mut o = std::ptr::null_mut();
    let mut s = std::ptr::null_mut();
    // SAFETY: out-pointers are to locals; the options live until freed here.
    unsafe {
        assert_eq!(sqz_options_new(&mut o), SQZ_OK);
        assert_eq!(sqz_options_set_policy(o, SQZ_POLICY_ADAPTIVE), SQZ_OK);
        assert_eq!(sqz_squeezer_new(o, &mut s), SQZ_OK);
        sqz_options_free(o);
    }
    s
}

/// Steps `s` toward `required` free on `sim` until the verdict is not "adjust": returns the
/// verdict, the blamed domids and the number of steps.
fn step_until_done(
    s: *mut sqz_squeezer,
    sim: &mut Simulator,
    required: Kib,
) -> (i32, Vec<i32>, u32) {
    let mut steps = 0;
    // SAFETY: a live squeezer.
    assert_eq!(
        unsafe { sqz_squeezer_begin_operation(s, sim.time()) },
        SQZ_OK
    );
    loop {
        let host = sim.make_host().unwrap();
        let doms: Vec<sqz_domain> = host.domains().iter().map(|&d| d.into()).collect();
        let mut actions = vec![sqz_action::default(); 8];
        let mut maxmem = vec![sqz_maxmem::default(); 8];
        let mut blamed = vec![0i32; 8];
        let mut judged = vec![sqz_judgement::default(); 8];
        let mut r = sqz_step_result {
            struct_size: std::mem::size_of::<sqz_step_result>() as u32,
            verdict: -1,
            actions: actions.as_mut_ptr(),
            actions_cap: actions.len(),
            actions_len: 0,
            maxmem: maxmem.as_mut_ptr(),
            maxmem_cap: maxmem.len(),
            maxmem_len: 0,
            blamed_domids: blamed.as_mut_ptr(),
            blamed_cap: blamed.len(),
            blamed_len: 0,
            judgements: judged.as_mut_ptr(),
            judgements_cap: judged.len(),
            judgements_len: 0,
        };
        // SAFETY: buffers are locals with the capacities given.
        let st = unsafe {
            sqz_squeezer_step(
                s,
                doms.as_ptr(),
                doms.len(),
                std::mem::size_of::<sqz_domain>(),
                host.free_mem_kib,
                required,
                sim.time(),
                None,
                std::ptr::null_mut(),
                &mut r,
            )
        };
        assert_eq!(st, SQZ_OK);
        steps += 1;
        // Every domain gets a maxmem, which follows its target.
        assert_eq!(r.maxmem_len, 2);
        for a in &actions[..r.actions_len] {
            sim.execute_action(Action {
                domid: a.domid,
                new_target_kib: a.new_target_kib,
            })
            .unwrap();
            let m = maxmem[..2].iter().find(|m| m.domid == a.domid).unwrap();
            assert_eq!(m.maxmem_kib, a.new_target_kib);
        }
        // Both guests are judged every round, and a guest blamed is judged uncooperative.
        assert_eq!(r.judgements_len, 2);
        for b in &blamed[..r.blamed_len] {
            let j = judged[..2].iter().find(|j| j.domid == *b).unwrap();
            assert!(j.cooperation.uncooperative, "{j:?}");
        }
        if r.verdict != SQZ_VERDICT_ADJUST_TARGETS {
            return (r.verdict, blamed[..r.blamed_len].to_vec(), steps);
        }
        sim.wait(1.0).unwrap();
    }
}

#[test]
fn adaptive_single_steps_free_memory_as_the_adaptive_call_does() {
    // 100 and 4 MiB/s freeing 2 GiB: T* = 2048 / 104 = 19.7 s.
    let required = SLUSH + 2 * GIB;
    let fast_and_slow = || {
        host(
            100,
            Behaviour::Ideal {
                rate_kib_per_s: 4 * MIB,
            },
        )
    };
    let mut by_call = fast_and_slow();
    Adaptive::default()
        .change_host_free_memory(&mut by_call, required, &mut |free| free >= required)
        .unwrap();

    let mut by_step = fast_and_slow();
    let s = adaptive_squeezer();
    let (verdict, blamed, steps) = step_until_done(s, &mut by_step, required);
    assert_eq!(verdict, SQZ_VERDICT_SUCCESS);
    assert!(blamed.is_empty());
    assert_eq!(by_step.time(), by_call.time());
    assert_eq!(f64::from(steps), by_step.time() + 1.0);
    assert_eq!(
        by_step.make_host().unwrap().domains(),
        by_call.make_host().unwrap().domains()
    );
    // SAFETY: a live squeezer, freed once.
    unsafe { sqz_squeezer_free(s) };
}

#[test]
fn an_adaptive_step_that_needs_a_stuck_guest_fails_naming_it_and_judges_it_uncooperative() {
    // Guest 1 can give 7 GiB, the request needs 8 GiB: guest 2, whose driver never moves, is
    // needed.
    let mut sim = host(100, Behaviour::Stuck);
    let s = adaptive_squeezer();
    let (verdict, blamed, steps) = step_until_done(s, &mut sim, SLUSH + 8 * GIB);
    assert_eq!(verdict, SQZ_VERDICT_FAILED);
    assert_eq!(blamed, vec![2]);
    // After the 5 s grace period, not after a wall-clock deadline.
    assert!(steps < 15, "{steps} steps");
    let mut c = sqz_cooperation {
        score_s: 0.0,
        uncooperative: false,
        concern: 0,
    };
    // SAFETY: a live squeezer and a local out-struct.
    unsafe {
        assert_eq!(sqz_squeezer_cooperation(s, 2, &mut c), SQZ_OK);
        assert!(c.uncooperative && c.concern == SQZ_CONCERN_NOT_MOVING);
        assert_eq!(sqz_squeezer_cooperation(s, 1, &mut c), SQZ_OK);
        assert!(!c.uncooperative);
        sqz_squeezer_free(s);
    }
}

#[test]
fn a_caller_of_the_first_layout_gets_no_judgements_and_nothing_written_past_its_struct() {
    let mut sim = host(100, Behaviour::Stuck);
    let s = adaptive_squeezer();
    let host = sim.make_host().unwrap();
    let doms: Vec<sqz_domain> = host.domains().iter().map(|&d| d.into()).collect();
    let mut actions = vec![sqz_action::default(); 8];
    let mut maxmem = vec![sqz_maxmem::default(); 8];
    // The first published layout was 80 bytes (64-bit); the fields after it stand for the
    // caller's own memory, which must come back untouched.
    let mut r = sqz_step_result {
        struct_size: 80,
        verdict: -1,
        actions: actions.as_mut_ptr(),
        actions_cap: actions.len(),
        actions_len: 0,
        maxmem: maxmem.as_mut_ptr(),
        maxmem_cap: maxmem.len(),
        maxmem_len: 0,
        blamed_domids: std::ptr::null_mut(),
        blamed_cap: 0,
        blamed_len: 0,
        judgements: std::ptr::null_mut(),
        judgements_cap: 0,
        judgements_len: 777,
    };
    // SAFETY: a live squeezer; buffers are locals with the capacities given.
    let st = unsafe {
        sqz_squeezer_begin_operation(s, sim.time());
        sqz_squeezer_step(
            s,
            doms.as_ptr(),
            doms.len(),
            std::mem::size_of::<sqz_domain>(),
            host.free_mem_kib,
            SLUSH + 8 * GIB,
            sim.time(),
            None,
            std::ptr::null_mut(),
            &mut r,
        )
    };
    assert_eq!(st, SQZ_OK);
    assert_eq!(r.maxmem_len, 2);
    assert_eq!(r.judgements_len, 777);
    // SAFETY: a live squeezer, freed once.
    unsafe { sqz_squeezer_free(s) };
}
