"""make_strategy(name, ...) -> tf.distribute.Strategy, and who writes files under it."""

import os

import tensorflow as tf

STRATEGIES = ("auto", "one_device", "mirrored", "multi_worker_mirrored", "tpu")


def split_cpu(num_devices: int) -> None:
    """Splits the CPU into logical devices so MirroredStrategy has replicas on a CPU host.

    Must run before anything initializes TensorFlow's runtime.
    """
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * num_devices)


def make_strategy(name: str, num_cpu_devices: int = 1, tpu: str = "") -> tf.distribute.Strategy:
    """Creates a strategy.

    Args:
      name: one of STRATEGIES. "auto": Mirrored over several GPUs (or logical CPUs), else one
        device. "multi_worker_mirrored" reads the cluster from TF_CONFIG.
      num_cpu_devices: logical CPU devices to create (for Mirrored on a CPU host).
      tpu: TPU name or address for "tpu" ("" finds the local TPU VM's).
    """
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r} (choose from {', '.join(STRATEGIES)})")
    if num_cpu_devices > 1:
        split_cpu(num_cpu_devices)
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if name == "multi_worker_mirrored":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("--strategy=multi_worker_mirrored needs TF_CONFIG describing the "
                             "cluster")
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
    devices = gpus or cpus
    if name == "mirrored" or (name == "auto" and len(devices) > 1):
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.OneDeviceStrategy(devices[0])


def replicas_on_cpu(strategy: tf.distribute.Strategy) -> bool:
    """Whether every replica of a strategy from make_strategy runs on a CPU device."""
    return all(tf.DeviceSpec.from_string(device).device_type == "CPU"
               for device in strategy.extended.worker_devices)


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """Whether this process writes checkpoints, summaries and exports."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    return resolver.task_type == "chief" or (
        resolver.task_type == "worker" and resolver.task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict())


def writer_dir(model_dir: str, strategy: tf.distribute.Strategy) -> str:
    """The chief writes into model_dir; other workers into a scratch dir they delete after.

    Under MultiWorkerMirroredStrategy every worker must take part in saving a checkpoint.
    """
    if is_chief(strategy):
        return model_dir
    resolver = strategy.cluster_resolver
    return os.path.join(model_dir, f".worker-{resolver.task_type}-{resolver.task_id}")
