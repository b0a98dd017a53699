//! Arbitrary bytes as nym-api's key rotation answer: `Schedule::from_nym_api` must refuse or
//! accept without panicking, and for what it accepts the schedule's arithmetic (epochs at any
//! time, their starts, the plan of live keys) must not panic or overflow either.

#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use nym_mixnode::rotation::Schedule;

fuzz_target!(|data: &[u8]| {
    let Ok(schedule) = Schedule::from_nym_api(data) else {
        return;
    };
    assert!(schedule.validity_epochs >= 1);
    for seconds in [0u64, 1, 3_600, 1 << 32, u64::from(u32::MAX) * 3_600] {
        let now = UNIX_EPOCH + Duration::from_secs(seconds);
        for ahead in [0, 1, u32::MAX] {
            let epoch = schedule.epoch_at(now, ahead);
            assert!(epoch >= schedule.current_epoch);
            let plan = schedule.plan(epoch);
            if let Some((other, _)) = plan.other {
                assert_eq!(other.abs_diff(plan.primary), 1);
            }
            let _ = schedule.epoch_start(epoch.saturating_add(1));
            let _ = schedule.rotation_of(epoch);
        }
    }
    let _ = schedule.filter_lifetime();
});
