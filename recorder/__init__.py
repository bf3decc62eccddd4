"""Tamper-evident session recordings and the audit log.

writer.RecordingWriter (record), verify.verify_recording (prove whole or say where it was cut or
altered), reader.read_events (decode), audit.AuditLog / read_audit / verify_audit.
Format: docs/recording-format.md. Must not import proxy/ or policy/.
"""
