"""Energy of the timed region: NVML's total-energy counter [mJ] read before and after it; the
record's `energy` is {method, joules, j_per_image, img_per_j} or {method: "not measured", reason}."""


class EnergyMeter:
    def __init__(self, device: str, nvml_index: int | None = None):
        self.reason, self.read = "no GPU energy counter on a CPU", None
        if device != "cuda":
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(nvml_index or 0)
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)  # raises where unsupported
            self.read = lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
        except Exception as exc:  # NVML missing or the counter not supported: say so
            self.reason = f"NVML energy counter unavailable ({type(exc).__name__}: {exc})"

    def start(self) -> None:
        self.mj = [self.read()] if self.read else []

    def stop(self) -> None:
        if self.read:
            self.mj.append(self.read())

    def section(self, images: int) -> dict:
        if not self.read or len(self.mj) != 2:
            return {"method": "not measured", "reason": self.reason}
        joules = (self.mj[1] - self.mj[0]) / 1000
        out = {"method": "nvml total energy", "joules": joules, "j_per_image": joules / images}
        return out | {"img_per_j": images / joules if joules > 0 else None}
