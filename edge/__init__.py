"""The HTTP edge every service shares: auth, problem details, body limits, CORS."""
