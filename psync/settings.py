"""The settings moved to ``core.settings`` (below everything that reads them); this name
stays for scripts and notes that import it from here."""

from core.settings import DATA_DIR, Settings, get_settings

__all__ = ["DATA_DIR", "Settings", "get_settings"]
