"""Captures that start themselves when an alert fires: CaptureTrigger resources (``model``),
the decision from alert to Capture (``decide``) and the Alertmanager webhook receiver
(``receiver``). The operator runs them (``retina_capture.operator.triggers``)."""
