//! The Windows service: `injixo-sync service install|uninstall|start|stop`, and `service run`,
//! which the service control manager (SCM) starts.
//!
//! The service starts automatically (delayed, so the network is up), runs as LocalSystem, and
//! is restarted by the SCM after 10 s, 1 min and 5 min when it fails (also when it exits with
//! an error rather than crashing); the failure count resets after a day. It reports
//! `START_PENDING` until the outbox is open and every source runs, then `RUNNING`; a stop or
//! shutdown from the SCM drains it like SIGTERM does on Linux (`STOP_PENDING` meanwhile). Logs
//! go to daily files in `%ProgramData%\injixo-sync\logs`, the last 14 kept.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio_util::sync::CancellationToken;
use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceControl, ServiceControlAccept,
    ServiceErrorControl, ServiceExitCode, ServiceFailureActions, ServiceFailureResetPeriod,
    ServiceInfo, ServiceStartType, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{self, ServiceControlHandlerResult};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};
use windows_service::{define_windows_service, service_dispatcher};

use crate::config::{Config, program_data};
use crate::logging::LogConfig;

/// The service's name in the SCM (`sc query injixo-sync`).
pub const NAME: &str = "injixo-sync";
const DISPLAY_NAME: &str = "injixo-sync";
const DESCRIPTION: &str = "Delivers contact-center data (contact events, agent statuses) to the \
                           injixo import API, durably, from a local outbox.";
const EXAMPLE: &str = include_str!("../../config.example.toml");
/// Daily log files kept.
const LOG_FILES_KEPT: usize = 14;
/// The SCM's answer when a service of that name is registered already.
const ERROR_SERVICE_EXISTS: i32 = 1073;
/// How long the SCM is told a stop may take: the request in flight plus a margin.
const STOP_HINT: Duration = Duration::from_secs(45);

/// The SCM's handle for reporting status, once `service run` has registered.
static STATUS: OnceLock<service_control_handler::ServiceStatusHandle> = OnceLock::new();
/// The configuration `service run` was given (the SCM calls [`service_main`] without it).
static CONFIG: OnceLock<PathBuf> = OnceLock::new();
/// What `service run` was handed to run, taken once by [`serve`] (the SCM calls
/// [`service_main`] without it).
static DAEMON: Mutex<Option<Daemon>> = Mutex::new(None);

/// The daemon with its configuration, until the token is cancelled.
type Daemon = Box<dyn FnOnce(Config, CancellationToken) -> anyhow::Result<()> + Send>;

pub fn install(config: &Path) -> anyhow::Result<()> {
    let config = std::path::absolute(config)
        .with_context(|| format!("cannot resolve {}", config.display()))?;
    let data = program_data();
    std::fs::create_dir_all(data.join("logs"))
        .with_context(|| format!("cannot create {}", data.join("logs").display()))?;
    let example = data.join("config.example.toml");
    if !example.exists() {
        std::fs::write(&example, EXAMPLE)
            .with_context(|| format!("cannot write {}", example.display()))?;
    }
    let manager = manager(ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE)?;
    let info = ServiceInfo {
        name: NAME.into(),
        display_name: DISPLAY_NAME.into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: ServiceStartType::AutoStart,
        error_control: ServiceErrorControl::Normal,
        executable_path: std::env::current_exe().context("cannot tell this executable's path")?,
        launch_arguments: vec![
            "--config".into(),
            config.clone().into_os_string(),
            "service".into(),
            "run".into(),
        ],
        dependencies: vec![],
        account_name: None,
        account_password: None,
    };
    let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::QUERY_CONFIG | ServiceAccess::START;
    // Installing again (an upgrade, or the MSI's registration) updates the registration.
    let service = match manager.create_service(&info, access) {
        Ok(s) => s,
        Err(windows_service::Error::Winapi(e))
            if e.raw_os_error() == Some(ERROR_SERVICE_EXISTS) =>
        {
            let s = manager
                .open_service(NAME, access)
                .map_err(|e| scm_error(e, "cannot open the registered service"))?;
            s.change_config(&info)
                .map_err(|e| scm_error(e, "cannot update the registered service"))?;
            s
        }
        Err(e) => return Err(scm_error(e, "cannot register the service")),
    };
    service
        .set_description(DESCRIPTION)
        .map_err(|e| scm_error(e, "cannot set the description"))?;
    let restart = |secs| ServiceAction {
        action_type: ServiceActionType::Restart,
        delay: Duration::from_secs(secs),
    };
    service
        .update_failure_actions(ServiceFailureActions {
            reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
            reboot_msg: None,
            command: None,
            actions: Some(vec![restart(10), restart(60), restart(300)]),
        })
        .map_err(|e| scm_error(e, "cannot set the recovery actions"))?;
    // Refinements some service managers lack (Wine): the service works without them.
    if let Err(e) = service.set_failure_actions_on_non_crash_failures(true) {
        println!(
            "warning: restart on error exits not set ({e}); set it with `sc.exe failureflag {NAME} 1`"
        );
    }
    if let Err(e) = service.set_delayed_auto_start(true) {
        println!("warning: delayed automatic start not set ({e}); automatic start is");
    }
    let requested = [10, 60, 300];
    let confirmed = service
        .get_failure_actions()
        .ok()
        .and_then(|f| f.actions)
        .map(|a| a.iter().map(|a| a.delay.as_secs()).collect::<Vec<_>>() == requested);
    if confirmed != Some(true) {
        println!("warning: the service manager does not report the recovery actions back");
    }
    println!(
        "installed service {NAME:?}: automatic start, restarted on failure (after 10 s, 60 s, \
         300 s), configuration {}",
        config.display()
    );
    if !config.exists() {
        println!(
            "next: write {} (start from {}), then `injixo-sync service start`",
            config.display(),
            example.display()
        );
    }
    Ok(())
}

pub fn uninstall() -> anyhow::Result<()> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let service = manager
        .open_service(
            NAME,
            ServiceAccess::QUERY_STATUS | ServiceAccess::STOP | ServiceAccess::DELETE,
        )
        .map_err(|e| scm_error(e, "cannot open the service (is it installed?)"))?;
    if service.query_status()?.current_state != ServiceState::Stopped {
        let _ = service.stop();
        wait_for(&service, ServiceState::Stopped, STOP_HINT + STOP_HINT)?;
    }
    service
        .delete()
        .map_err(|e| scm_error(e, "cannot remove the service"))?;
    println!(
        "removed service {NAME:?}; configuration, outbox and logs stay in {}",
        program_data().display()
    );
    Ok(())
}

pub fn start() -> anyhow::Result<()> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let service = manager
        .open_service(NAME, ServiceAccess::QUERY_STATUS | ServiceAccess::START)
        .map_err(|e| scm_error(e, "cannot open the service (is it installed?)"))?;
    service
        .start(&[] as &[&OsStr])
        .map_err(|e| scm_error(e, "cannot start the service"))?;
    match wait_for(&service, ServiceState::Running, Duration::from_secs(120)) {
        Ok(()) => {
            println!("service {NAME:?} is running");
            Ok(())
        }
        Err(e) => bail!(
            "{e}; see the log in {}",
            program_data().join("logs").display()
        ),
    }
}

pub fn stop() -> anyhow::Result<()> {
    let manager = manager(ServiceManagerAccess::CONNECT)?;
    let service = manager
        .open_service(NAME, ServiceAccess::QUERY_STATUS | ServiceAccess::STOP)
        .map_err(|e| scm_error(e, "cannot open the service (is it installed?)"))?;
    service
        .stop()
        .map_err(|e| scm_error(e, "cannot stop the service"))?;
    wait_for(&service, ServiceState::Stopped, STOP_HINT + STOP_HINT)?;
    println!("service {NAME:?} stopped");
    Ok(())
}

define_windows_service!(ffi_service_main, service_main);

/// `service run`: hands this process to the SCM, which calls [`service_main`]; that runs
/// `daemon` until the SCM asks the service to stop.
pub fn run(
    config: &Path,
    daemon: impl FnOnce(Config, CancellationToken) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<()> {
    let _ = CONFIG.set(config.to_owned());
    *DAEMON.lock().unwrap_or_else(PoisonError::into_inner) = Some(Box::new(daemon));
    service_dispatcher::start(NAME, ffi_service_main).context(
        "`service run` is what the service control manager starts; in a console use \
         `injixo-sync run`",
    )
}

fn service_main(_arguments: Vec<OsString>) {
    let stop = CancellationToken::new();
    let on_control = stop.clone();
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown => {
            on_control.cancel();
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let Ok(handle) = service_control_handler::register(NAME, handler) else {
        return;
    };
    let _ = STATUS.set(handle);
    report(ServiceState::StartPending, ServiceExitCode::Win32(0));
    let code = match serve(stop) {
        Ok(()) => ServiceExitCode::Win32(0),
        Err(e) => {
            tracing::error!("{e:#}");
            // A service-specific error: the SCM's recovery actions restart the service.
            ServiceExitCode::ServiceSpecific(1)
        }
    };
    report(ServiceState::Stopped, code);
}

fn serve(stop: CancellationToken) -> anyhow::Result<()> {
    let path = CONFIG
        .get()
        .cloned()
        .unwrap_or_else(crate::config::default_config_path);
    let config = Config::load(&path);
    let log = match &config {
        Ok(c) => c.log.clone(),
        Err(_) => LogConfig::default(),
    };
    crate::logging::init_files(&log, &program_data().join("logs"), LOG_FILES_KEPT)?;
    let config = config?;
    let daemon = DAEMON
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .context("the service was started without the daemon to run")?;
    daemon(config, stop)
}

/// What [`super::Notifier`] says becomes the service's state: `READY=1` → running,
/// `STOPPING=1` → stop pending. Outside the service it does nothing.
pub fn notify(state: &str) {
    if state.lines().any(|l| l == "READY=1") {
        report(ServiceState::Running, ServiceExitCode::Win32(0));
    } else if state.lines().any(|l| l == "STOPPING=1") {
        report(ServiceState::StopPending, ServiceExitCode::Win32(0));
    }
}

/// Whether this process runs as the service.
pub fn is_service() -> bool {
    STATUS.get().is_some()
}

fn report(state: ServiceState, exit_code: ServiceExitCode) {
    let Some(handle) = STATUS.get() else {
        return;
    };
    let pending = matches!(
        state,
        ServiceState::StartPending | ServiceState::StopPending
    );
    let _ = handle.set_service_status(ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted: if state == ServiceState::Running {
            ServiceControlAccept::STOP | ServiceControlAccept::SHUTDOWN
        } else {
            ServiceControlAccept::empty()
        },
        exit_code,
        checkpoint: u32::from(pending),
        wait_hint: if pending { STOP_HINT } else { Duration::ZERO },
        process_id: None,
    });
}

fn manager(access: ServiceManagerAccess) -> anyhow::Result<ServiceManager> {
    ServiceManager::local_computer(None::<&str>, access).map_err(|e| {
        scm_error(
            e,
            "cannot reach the service control manager (run as Administrator)",
        )
    })
}

fn wait_for(
    service: &windows_service::service::Service,
    want: ServiceState,
    limit: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let status = service.query_status()?;
        if status.current_state == want {
            return Ok(());
        }
        if want == ServiceState::Running && status.current_state == ServiceState::Stopped {
            bail!(
                "the service stopped while starting (exit code {:?})",
                status.exit_code
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "the service is {:?} after {} s",
                status.current_state,
                limit.as_secs()
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn scm_error(e: windows_service::Error, what: &str) -> anyhow::Error {
    anyhow::anyhow!("{what}: {e}")
}
