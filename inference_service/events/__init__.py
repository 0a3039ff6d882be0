"""Events of state changes: numbered, buffered for resuming, fanned out to watchers."""

from inference_service.events.bus import Event, EventBus, EventSubscription, Resync, ResyncReason

__all__ = ["Event", "EventBus", "EventSubscription", "Resync", "ResyncReason"]
