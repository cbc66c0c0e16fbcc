"""`OwnedEngines`: the model engines a resource owns (LLMResource, RewardResource): made on first
use per key, shared by every caller of that key, closed together when the step's execution ends."""

import threading
from typing import Any, Callable


class OwnedEngines(dict):
    """key -> engine (a dict, so `len()` and comparisons read it); thread-safe creation and close."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def get_or_make(self, key: str, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self:
                self[key] = make()
            return self[key]

    def close(self) -> None:
        with self._lock:
            for engine in self.values():
                engine.close()
            self.clear()
