"""Core ML (iPhone): one ``.mlpackage`` per component; iOS 18 stateful int4, or iOS 17 int8."""
