import factory
from django.db import transaction
from factory.django import DjangoModelFactory

from inbox.integrations import set_crm_api_key
from inbox.models import Channel, CrmIntegration, InboxSession
from outbox.services import build_message, queue_messages
from tests.factories import TenantFactory

CRM_API_KEY = "crm-live-key-Zx81Qw7Lm2"
CONFIRMATION_TEXT = "Connecting you to an agent..."


class InboxSessionFactory(DjangoModelFactory):
    """An open WhatsApp session whose confirmation message the handover has just queued."""

    class Meta:
        model = InboxSession
        skip_postgeneration_save = True

    tenant = factory.SubFactory(TenantFactory)
    contact_id = factory.Sequence(lambda n: f"49151{n:07d}")
    contact_name = factory.Faker("name")
    channel = Channel.WHATSAPP

    @factory.post_generation
    def confirmation(obj, create, extracted, **kwargs):
        """Queue the confirmation as the handover does (`confirmation=False`: none)."""
        if not create or extracted is False:
            return
        with transaction.atomic():
            message = build_message(
                tenant=obj.tenant,
                channel="whatsapp",
                kind="handover.confirmation",
                target=obj.contact_id,
                payload={"session_id": str(obj.pk), "text": extracted or CONFIRMATION_TEXT},
            )
            queue_messages([message])
            obj.confirmation_message = message
            obj.save(update_fields=["confirmation_message"])


class CrmIntegrationFactory(DjangoModelFactory):
    """An active, complete integration. `api_key=""` leaves it without a key."""

    class Meta:
        model = CrmIntegration
        skip_postgeneration_save = True

    tenant = factory.SubFactory(TenantFactory)
    name = "Acme CRM"
    is_active = True
    api_url = "http://crm.invalid/"
    config = factory.LazyFunction(lambda: {"phoneNumberId": "PN1"})

    @factory.post_generation
    def api_key(obj, create, extracted, **kwargs):
        plaintext = CRM_API_KEY if extracted is None else extracted
        if create and plaintext:
            set_crm_api_key(integration=obj, plaintext=plaintext)
