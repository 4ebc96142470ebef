"""`radfusion report --run DIR`: one self-contained HTML page of evidence for a
trained model (figures embedded as PNG), built by ``build.build_report``."""
