"""The data plane: what moves the bytes of a transfer once the control plane has started it.

* ``sources``: an asset's data address → a stream of byte chunks (files, HTTP upstreams,
  OGC SensorThings, MQTT topics), with HTTP byte ranges for files.
* ``records``, ``gate``, ``gated_stream``: the personal-data gate and the filter that
  releases only the records whose subject the gate admits.
* ``push``: streams a source into an endpoint the consumer named; ``sink``: the receiving
  connector's endpoint that writes pushed data into ``<data_dir>/sink/``.

Nothing here touches the database or knows about DSP: the control plane decides whether a
transfer may move data and calls these functions.
"""
