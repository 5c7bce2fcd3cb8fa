"""Delegation (RFC 8693 §1.1, §4.1, §4.4): the ``act`` and ``may_act`` claims of a minted
token, and its lineage (``DERIVED_FROM``) through the tokens of ours it was minted from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..oauth.profile import ACTOR_PROFILES, DERIVED_FROM, MAX_DERIVED_FROM, SUB_PROFILE
from .introspection import lineage
from .record import RequestRecord, refused
from .upstream import VerifiedToken

if TYPE_CHECKING:
    from ..obs.metrics import Metrics


class Delegation:
    """Who acts for whom: identities are (issuer, sub) pairs in our namespace."""

    def __init__(
        self,
        own_issuer: str,
        subject_prefixes: Mapping[str, str],
        metrics: Metrics | None = None,
    ) -> None:
        self.own_issuer = own_issuer
        #: Each configured upstream issuer's ``subject_prefix``.
        self.subject_prefixes = subject_prefixes
        self.metrics = metrics

    def identity(self, issuer: str, sub: str) -> tuple[str, str]:
        """(issuer, sub) in our namespace: ``("", minted sub)`` for anyone from a configured
        issuer (ours included, whose subjects are minted ones already), else as given."""
        if issuer == self.own_issuer:
            return "", sub
        prefix = self.subject_prefixes.get(issuer)
        if prefix is not None:
            return "", prefix + sub
        return issuer, sub

    def claims(
        self,
        subject: VerifiedToken,
        actor: VerifiedToken | None,
        record: RequestRecord,
        *,
        max_depth: int,
        actor_profile: str | None = None,
    ) -> dict[str, Any]:
        """The ``act`` and ``may_act`` claims of the minted token (RFC 8693 §4.1, §4.4).

        The chain (the new actor on top of the subject token's own ``act``) may neither repeat
        anyone, the subject included, nor be longer than ``max_depth`` (the client's
        ``max_delegation_depth``); the subject token's ``may_act`` must name the actor, and is
        carried on so that it binds every later hop too.

        Every member states ``sub`` with the ``iss`` it is read in (the OAuth Actor Profile,
        §3.4: the actor token's own issuer, a SPIFFE trust domain included), the new actor
        its kind in ``sub_profile`` when its client's ``actor_sub_profile`` says it; earlier
        members keep what they said (``sub``, ``iss``, ``sub_profile``).
        """
        claims: dict[str, Any] = {}
        if actor is None and "act" not in subject.claims and "may_act" not in subject.claims:
            return claims  # the usual exchange: no delegation at all
        may_act = subject.claims.get("may_act")
        if may_act is not None:
            if not (
                isinstance(may_act, dict)
                and isinstance(may_act.get("sub"), str)
                # An empty iss would be our namespace: anyone of any configured issuer.
                and isinstance(may_act.get("iss", subject.issuer), str)
                and may_act.get("iss", subject.issuer)
            ):
                raise refused(
                    record,
                    self.metrics,
                    "may_act",
                    "subject_token has an invalid may_act",
                    parameter="subject_token",
                )
            # A may_act without iss names someone of the subject token's own issuer, not
            # whoever of any trusted issuer happens to have that sub.
            allowed = self.identity(may_act.get("iss", subject.issuer), may_act["sub"])
            if actor is not None and self.identity(actor.issuer, actor.subject) != allowed:
                raise refused(
                    record,
                    self.metrics,
                    "may_act",
                    "actor_token is not allowed to act for this subject (may_act)",
                    parameter="actor_token",
                )
            claims["may_act"] = _written(allowed)

        members = self.prior_actors(subject, max_depth + 1, record)
        if actor is not None:
            written = {"sub": actor.subject, "iss": actor.issuer}
            if actor_profile:
                written["sub_profile"] = actor_profile
            members.insert(0, (self.identity(actor.issuer, actor.subject), written))
        chain = [identity for identity, _ in members]
        token = "subject_token" if actor is None else "actor_token"
        if len(chain) > max_depth:
            raise refused(
                record,
                self.metrics,
                "act_depth",
                "the delegation chain (act) is longer than this client allows",
                parameter=token,
            )
        everyone = [self.identity(subject.issuer, subject.subject), *chain]
        if len(set(everyone)) != len(everyone):
            raise refused(
                record,
                self.metrics,
                "act_cycle",
                "the delegation chain (act) is circular",
                parameter=token,
            )
        act: dict[str, Any] | None = None
        for _, written in reversed(members):
            entry = dict(written)
            if act is not None:
                entry["act"] = act
            act = entry
        if act is not None:
            claims["act"] = act
        return claims

    def prior_actors(
        self, subject: VerifiedToken, most: int, record: RequestRecord
    ) -> list[tuple[tuple[str, str], dict[str, Any]]]:
        """The identities in the subject token's ``act``, most recent first, at most ``most``,
        each with the member as the minted token restates it (``sub``, ``iss``, and a valid
        ``sub_profile``).

        ``act`` must be a chain (RFC 8693 §4.1): objects, each with a string ``sub``, an optional
        string ``iss`` (without it, the subject token's issuer) and an optional nested ``act``.
        Anything else is refused, never dropped: a token whose actors cannot be read must not
        pass for one without any. Other members are ignored (they describe the actor to its
        own issuer and are not ours to vouch for). Only a token of ours may name our own issuer
        in ``act``: no other issuer speaks for our namespace.
        """
        chain: list[tuple[tuple[str, str], dict[str, Any]]] = []
        node = subject.claims.get("act")
        while node is not None and len(chain) < most:
            member = node if isinstance(node, dict) else {}
            sub, issuer = member.get("sub"), member.get("iss", subject.issuer)
            # An empty iss would name our namespace too (see identity).
            if not (isinstance(sub, str) and sub and isinstance(issuer, str) and issuer) or (
                issuer == self.own_issuer and subject.issuer != self.own_issuer
            ):
                raise refused(
                    record,
                    self.metrics,
                    "act_invalid",
                    "subject_token has an invalid act claim",
                    parameter="subject_token",
                )
            written = {"sub": sub, "iss": issuer}
            profile = member.get("sub_profile")
            if (
                isinstance(profile, str)
                and SUB_PROFILE.fullmatch(profile)
                and set(profile.split()) <= set(ACTOR_PROFILES)
            ):
                written["sub_profile"] = profile
            chain.append((self.identity(issuer, sub), written))
            node = member.get("act")
        return chain

    def derived_from(
        self, subject: VerifiedToken, actor: VerifiedToken | None, record: RequestRecord
    ) -> dict[str, Any]:
        """The ``DERIVED_FROM`` claim of the minted token: the lineage (own ``jti`` first) of
        the subject and actor tokens that are ours, so that revoking any of them deactivates
        it too. Refused rather than cut when longer than ``MAX_DERIVED_FROM``: a dropped
        ancestor would be a revocation that no longer reaches it."""
        derived: dict[str, None] = {}
        for token in (subject, actor):
            if token is not None and token.issuer == self.own_issuer:
                # Checked by TokenVerification.check_not_revoked when the token was verified.
                derived.update(dict.fromkeys(lineage(token.claims) or ()))
        if not derived:
            return {}
        if len(derived) > MAX_DERIVED_FROM:
            raise refused(
                record,
                self.metrics,
                "derived_too_long",
                "the chain of tokens this one derives from is too long",
                parameter="subject_token",
            )
        return {DERIVED_FROM: list(derived)}


def _written(identity: tuple[str, str]) -> dict[str, Any]:
    """An identity as a minted token states it (RFC 8693 §4.1): ``sub`` alone when it is in
    our namespace, with its ``iss`` otherwise; the current actor on top, earlier ones nested."""
    issuer, sub = identity
    return {"sub": sub} if not issuer else {"sub": sub, "iss": issuer}
