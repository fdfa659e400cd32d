"""The hardware guard, polled by the daemon.

sensors     readings from NVML, psutil and the sensor file, behind one interface
policy      Guard: readings -> verdict (pause, throttle, checkpoint, stop)
watch       HardwareWatch: poll on schedule, record hardware.json, hand the verdict on
"""
