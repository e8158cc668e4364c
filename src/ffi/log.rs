//! `sqz_set_log_callback`: the library's log records, delivered to the caller.
//!
//! The library logs through the `log` facade and installs nothing by default, so it stays
//! silent. A caller that wants the records names a callback; only then is a logger installed,
//! inside this library's own copy of the facade.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::ffi::{c_char, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, Once};

use super::error::{invalid, sqz_status};
use super::guard;
use crate::Error;

/// Receives one log record: `level` is one of `SQZ_LOG_ERROR` .. `SQZ_LOG_TRACE`, `target` the
/// part of the library that wrote it (e.g. "squeeze::driver"), `message` the text. Both strings
/// are NUL-terminated UTF-8, valid only during the call.
pub type sqz_log_fn = Option<
    unsafe extern "C" fn(
        ctx: *mut c_void,
        level: i32,
        target: *const c_char,
        message: *const c_char,
    ),
>;

/// `sqz_set_log_callback` level: deliver nothing.
pub const SQZ_LOG_OFF: i32 = 0;
/// Log level: something failed.
pub const SQZ_LOG_ERROR: i32 = 1;
/// Log level: something is wrong but the operation goes on.
pub const SQZ_LOG_WARN: i32 = 2;
/// Log level: decisions an operator wants to see (every target change, with its reason).
pub const SQZ_LOG_INFO: i32 = 3;
/// Log level: every iteration of the squeezer.
pub const SQZ_LOG_DEBUG: i32 = 4;
/// Log level: everything.
pub const SQZ_LOG_TRACE: i32 = 5;

#[derive(Clone, Copy)]
struct Sink {
    f: unsafe extern "C" fn(*mut c_void, i32, *const c_char, *const c_char),
    // The caller's context, kept as an address: the caller vouches for its use from any thread.
    ctx: usize,
}

/// The callback in force and the deliveries in flight, by the generation of the callback they
/// use. Replacing the callback starts a new generation and waits until no delivery of an
/// older one is in flight, so the old `ctx` is not used once `sqz_set_log_callback` returns.
/// Deliveries never wait for a replacement (they take the sink in force when they start), and
/// no lock is held while the callback runs.
struct Sinks {
    sink: Option<Sink>,
    generation: u64,
    /// Deliveries in flight, per generation (entries at 0 are removed).
    in_flight: BTreeMap<u64, usize>,
}

static SINKS: Mutex<Sinks> = Mutex::new(Sinks {
    sink: None,
    generation: 0,
    in_flight: BTreeMap::new(),
});
static DELIVERED: Condvar = Condvar::new();
/// Whether a sink is set: `enabled` is asked for every record and must stay cheap.
static ACTIVE: AtomicBool = AtomicBool::new(false);
static INSTALL: Once = Once::new();
static LOGGER: CallbackLogger = CallbackLogger;

thread_local! {
    // Set while a record is being delivered, so a callback that calls back into the library
    // cannot recurse into itself.
    static DELIVERING: Cell<bool> = const { Cell::new(false) };
}

struct CallbackLogger;

fn sinks() -> MutexGuard<'static, Sinks> {
    SINKS
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', "\u{FFFD}")).expect("NULs were replaced")
}

/// Ends a delivery of generation `.0`, also when the callback unwinds.
struct InFlight(u64);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = sinks();
        if let Some(n) = s.in_flight.get_mut(&self.0) {
            *n -= 1;
            if *n == 0 {
                s.in_flight.remove(&self.0);
            }
        }
        DELIVERED.notify_all();
        DELIVERING.with(|d| d.set(false));
    }
}

impl log::Log for CallbackLogger {
    fn enabled(&self, _: &log::Metadata) -> bool {
        ACTIVE.load(Ordering::Relaxed)
    }

    fn log(&self, record: &log::Record) {
        if !ACTIVE.load(Ordering::Relaxed) || DELIVERING.with(|d| d.get()) {
            return;
        }
        let (sink, _in_flight) = {
            let mut s = sinks();
            let Some(sink) = s.sink else { return };
            let generation = s.generation;
            *s.in_flight.entry(generation).or_insert(0) += 1;
            DELIVERING.with(|d| d.set(true));
            (sink, InFlight(generation))
        };
        let level = match record.level() {
            log::Level::Error => SQZ_LOG_ERROR,
            log::Level::Warn => SQZ_LOG_WARN,
            log::Level::Info => SQZ_LOG_INFO,
            log::Level::Debug => SQZ_LOG_DEBUG,
            log::Level::Trace => SQZ_LOG_TRACE,
        };
        let target = c_text(record.target());
        let message = c_text(&record.args().to_string());
        // SAFETY: the caller registered `f` with `ctx` and promised both stay valid until the
        // callback is replaced or removed, which waits for this delivery (`_in_flight`); the
        // strings live until the call returns.
        unsafe {
            (sink.f)(
                sink.ctx as *mut c_void,
                level,
                target.as_ptr(),
                message.as_ptr(),
            )
        };
    }

    fn flush(&self) {}
}

/// Sends the library's log records at `max_level` and above (`SQZ_LOG_ERROR` .. `SQZ_LOG_TRACE`)
/// to `cb(ctx, level, target, message)`, replacing any earlier callback; `cb` NULL or
/// `SQZ_LOG_OFF` stops delivery. Until this is called the library logs nothing anywhere.
///
/// The callback may run on any thread that runs library code (including a service's background
/// balancer), possibly on several at once, so `ctx` must be safe to use from them; records that
/// the callback itself causes by calling into the library are dropped. `ctx` must stay valid
/// until the callback is replaced or removed: this call returns only once every delivery to
/// the earlier callback has returned, so the earlier `ctx` may then be freed (a callback that
/// waits for the thread replacing it would therefore never return). Errors: `max_level`
/// outside 0..=5, or a call from inside a log callback (it would wait for itself) →
/// `SQZ_ERR_INVALID_ARGUMENT`; another logger already installed in this library's copy of the
/// Rust log facade (only possible when the library is linked as a Rust crate into a program
/// that installed one) → `SQZ_ERR_UNSUPPORTED`.
#[no_mangle]
pub unsafe extern "C" fn sqz_set_log_callback(
    cb: sqz_log_fn,
    ctx: *mut c_void,
    max_level: i32,
) -> sqz_status {
    guard::status(|| {
        let filter = match max_level {
            SQZ_LOG_OFF => log::LevelFilter::Off,
            SQZ_LOG_ERROR => log::LevelFilter::Error,
            SQZ_LOG_WARN => log::LevelFilter::Warn,
            SQZ_LOG_INFO => log::LevelFilter::Info,
            SQZ_LOG_DEBUG => log::LevelFilter::Debug,
            SQZ_LOG_TRACE => log::LevelFilter::Trace,
            other => return Err(invalid(format!("log level must be 0 to 5, not {other}"))),
        };
        let mut ours = true;
        INSTALL.call_once(|| ours = log::set_logger(&LOGGER).is_ok());
        if !ours || !std::ptr::addr_eq(log::logger() as *const dyn log::Log, &LOGGER) {
            return Err(Error::Unsupported(
                "another logger is already installed in this process".into(),
            )
            .into());
        }
        if DELIVERING.with(|d| d.get()) {
            // Waiting for the deliveries of the old callback would wait for this one.
            return Err(invalid(
                "the log callback cannot be replaced or removed from inside a log callback",
            ));
        }
        let sink = cb.map(|f| Sink {
            f,
            ctx: ctx as usize,
        });
        let mut s = sinks();
        s.sink = sink;
        s.generation += 1;
        let current = s.generation;
        ACTIVE.store(sink.is_some(), Ordering::Relaxed);
        log::set_max_level(if sink.is_some() {
            filter
        } else {
            log::LevelFilter::Off
        });
        // Deliveries that started with an earlier callback end before the caller may free
        // its `ctx`.
        while s.in_flight.range(..current).next().is_some() {
            s = DELIVERED
                .wait(s)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        Ok(())
    })
}
