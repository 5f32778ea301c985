//! GPU metrics: read through NVML, exported as gauges labelled with GPU index and UUID.
//!
//! NVML (`libnvidia-ml.so`) is loaded at run time. Without an NVIDIA driver the worker runs
//! normally: it logs once that GPU metrics are unavailable and exports
//! `ssw_gpu_metrics_available 0`. The reading sits behind [`GpuSource`] so the export path is
//! tested with [`FakeSource`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::names;

/// One GPU at one instant.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuReading {
    /// Index (as `nvidia-smi` numbers it).
    pub index: u32,
    /// UUID.
    pub uuid: String,
    /// Utilisation, 0–1.
    pub utilization: f64,
    /// Memory used, bytes.
    pub memory_used: u64,
    /// Memory installed, bytes.
    pub memory_total: u64,
    /// Temperature, °C.
    pub temperature_c: f64,
    /// Power draw, W.
    pub power_w: f64,
}

/// Something that can read GPUs.
pub trait GpuSource: Send {
    /// Reads the GPUs with these indices (all GPUs when `indices` is empty).
    fn read(&mut self, indices: &[u32]) -> Result<Vec<GpuReading>, String>;
}

/// Readings given by a test.
pub struct FakeSource(pub Result<Vec<GpuReading>, String>);

impl GpuSource for FakeSource {
    fn read(&mut self, indices: &[u32]) -> Result<Vec<GpuReading>, String> {
        self.0.clone().map(|all| {
            all.into_iter()
                .filter(|g| indices.is_empty() || indices.contains(&g.index))
                .collect()
        })
    }
}

/// NVML, loaded at run time.
pub struct NvmlSource(nvml_wrapper::Nvml);

impl NvmlSource {
    /// Loads NVML; fails without an NVIDIA driver.
    pub fn load() -> Result<Self, String> {
        nvml_wrapper::Nvml::init()
            .map(Self)
            .map_err(|e| e.to_string())
    }
}

impl GpuSource for NvmlSource {
    fn read(&mut self, indices: &[u32]) -> Result<Vec<GpuReading>, String> {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let all: Vec<u32> = if indices.is_empty() {
            (0..self.0.device_count().map_err(|e| e.to_string())?).collect()
        } else {
            indices.to_vec()
        };
        all.into_iter()
            .map(|index| {
                let d = self
                    .0
                    .device_by_index(index)
                    .map_err(|e| format!("GPU {index}: {e}"))?;
                let mem = d.memory_info().map_err(|e| e.to_string())?;
                Ok(GpuReading {
                    index,
                    uuid: d.uuid().unwrap_or_default(),
                    utilization: d
                        .utilization_rates()
                        .map(|u| f64::from(u.gpu) / 100.0)
                        .unwrap_or(0.0),
                    memory_used: mem.used,
                    memory_total: mem.total,
                    temperature_c: d
                        .temperature(TemperatureSensor::Gpu)
                        .map(f64::from)
                        .unwrap_or(0.0),
                    power_w: d
                        .power_usage()
                        .map(|mw| f64::from(mw) / 1000.0)
                        .unwrap_or(0.0),
                })
            })
            .collect()
    }
}

/// Sets the GPU gauges from one reading (or marks GPU metrics unavailable).
pub fn export(worker: &str, readings: &Result<Vec<GpuReading>, String>) {
    let Ok(gpus) = readings else {
        metrics::gauge!(names::GPU_AVAILABLE, "worker" => worker.to_owned()).set(0.0);
        return;
    };
    metrics::gauge!(names::GPU_AVAILABLE, "worker" => worker.to_owned()).set(1.0);
    for g in gpus {
        let labels = [("gpu", g.index.to_string()), ("uuid", g.uuid.clone())];
        metrics::gauge!(names::GPU_UTILIZATION, &labels).set(g.utilization);
        metrics::gauge!(names::GPU_MEMORY_USED, &labels).set(g.memory_used as f64);
        metrics::gauge!(names::GPU_MEMORY_TOTAL, &labels).set(g.memory_total as f64);
        metrics::gauge!(names::GPU_TEMPERATURE, &labels).set(g.temperature_c);
        metrics::gauge!(names::GPU_POWER, &labels).set(g.power_w);
    }
}

/// Reads `indices` every `interval` until `shutdown`. `source` is `None` when NVML could not be
/// loaded: logged once, exported as unavailable.
pub async fn monitor(
    worker: String,
    mut source: Option<Box<dyn GpuSource>>,
    mut load_error: Option<String>,
    indices: Vec<u32>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    if let Some(e) = &load_error {
        tracing::info!(error = %e, "GPU metrics unavailable (no NVIDIA driver?); the worker runs without them");
    }
    let mut tick = tokio::time::interval(interval);
    let mut warned = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let reading = match source.take() {
            // NVML calls take milliseconds (power readings more): off the async threads, which
            // relay streams meanwhile.
            Some(mut s) => {
                let idx = indices.clone();
                match tokio::task::spawn_blocking(move || {
                    let r = s.read(&idx);
                    (s, r)
                })
                .await
                {
                    Ok((s, r)) => {
                        source = Some(s);
                        r
                    }
                    Err(e) => {
                        let e = format!("the GPU reading task failed: {e}");
                        tracing::warn!(error = %e, "GPU metrics unavailable from now on");
                        load_error = Some(e.clone());
                        Err(e)
                    }
                }
            }
            None => Err(load_error.clone().unwrap_or_default()),
        };
        if let (Err(e), false, true) = (&reading, warned, source.is_some()) {
            tracing::warn!(error = %e, "reading GPUs failed");
            warned = true;
        }
        export(&worker, &reading);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics_exporter_prometheus::PrometheusBuilder;

    fn rendered(f: impl FnOnce()) -> String {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, f);
        handle.render()
    }

    fn a40(index: u32) -> GpuReading {
        GpuReading {
            index,
            uuid: format!("GPU-{index}"),
            utilization: 0.75,
            memory_used: 40 << 30,
            memory_total: 48 << 30,
            temperature_c: 61.0,
            power_w: 250.5,
        }
    }

    #[test]
    fn readings_export_one_series_per_gpu() {
        let mut fake = FakeSource(Ok(vec![a40(0), a40(1)]));
        let reading = fake.read(&[1]);
        let text = rendered(|| export("heavy-1", &reading));
        assert!(
            text.contains("ssw_gpu_metrics_available{worker=\"heavy-1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ssw_gpu_utilization_ratio{gpu=\"1\",uuid=\"GPU-1\"} 0.75"),
            "{text}"
        );
        assert!(
            text.contains("ssw_gpu_memory_total_bytes{gpu=\"1\",uuid=\"GPU-1\"} 51539607552"),
            "{text}"
        );
        assert!(
            text.contains("ssw_gpu_power_watts{gpu=\"1\",uuid=\"GPU-1\"} 250.5"),
            "{text}"
        );
        assert!(
            !text.contains("gpu=\"0\""),
            "only the configured GPU: {text}"
        );
    }

    #[test]
    fn nvml_is_optional_and_read_when_present() {
        match NvmlSource::load() {
            // No NVIDIA driver (this machine, CI): marked unavailable, nothing else exported.
            Err(e) => {
                let reading: Result<Vec<GpuReading>, String> = Err(e);
                let text = rendered(|| export("light-0", &reading));
                assert!(
                    text.contains("ssw_gpu_metrics_available{worker=\"light-0\"} 0"),
                    "{text}"
                );
                assert!(!text.contains("ssw_gpu_utilization_ratio"), "{text}");
            }
            // A real driver: every GPU is read and exported.
            Ok(mut nvml) => {
                let reading = nvml.read(&[]);
                let gpus = reading.as_ref().map(Vec::len).unwrap_or(0);
                assert!(gpus > 0, "NVML loaded but read no GPU: {reading:?}");
                let text = rendered(|| export("light-0", &reading));
                assert!(
                    text.contains("ssw_gpu_metrics_available{worker=\"light-0\"} 1"),
                    "{text}"
                );
                assert_eq!(
                    text.matches("ssw_gpu_memory_total_bytes{").count(),
                    gpus,
                    "{text}"
                );
            }
        }
    }
}
