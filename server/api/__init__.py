"""What services and operators reach over HTTP: the admin API (contract §6) and the dashboard."""
